// Command sqlgen keeps sql/migrations and sql/install.sql in step with
// sql/functions.
//
//	go run ./scripts/sqlgen generate [-label update_functions] [-amend]
//	go run ./scripts/sqlgen verify
//
// -amend rewrites the newest migration instead of adding one: for a migration
// still in review, never for one that has landed.
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/durable-go/durable/internal/sqlgen"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: sqlgen generate [-label NAME] [-amend] | sqlgen verify")
		os.Exit(2)
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	root := fs.String("root", ".", "repository root")
	label := fs.String("label", "update_functions", "name part of a new migration file")
	amend := fs.Bool("amend", false, "rewrite the newest migration (only before it lands)")
	_ = fs.Parse(os.Args[2:])
	switch os.Args[1] {
	case "generate":
		wrote, err := sqlgen.Generate(*root, *label, *amend)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		for _, p := range wrote {
			fmt.Println("wrote", p)
		}
	case "verify":
		if err := sqlgen.Verify(*root); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Println("generated SQL is up to date")
	default:
		fmt.Fprintln(os.Stderr, "usage: sqlgen generate [-label NAME] [-amend] | sqlgen verify")
		os.Exit(2)
	}
}
