package durable_test

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/durable-go/durable"
	"github.com/durable-go/durable/internal/testdb"
)

func TestMain(m *testing.M) {
	testdb.Main(m, func(ctx context.Context, conn *pgx.Conn) error {
		return durable.Migrate(ctx, conn, nil)
	})
}
