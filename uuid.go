package durable

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"

	"github.com/jackc/pgx/v5/pgtype"
)

// UUID identifies a task or a run. It scans from and encodes to PostgreSQL's
// uuid, and marshals to JSON as its canonical string.
type UUID [16]byte

// ParseUUID parses the canonical form xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx,
// with or without the dashes.
func ParseUUID(s string) (UUID, error) {
	var u UUID
	var digits []byte
	for i := 0; i < len(s); i++ {
		if s[i] != '-' {
			digits = append(digits, s[i])
		}
	}
	if len(digits) != 32 {
		return u, fmt.Errorf("durable: invalid UUID %q", s)
	}
	if _, err := hex.Decode(u[:], digits); err != nil {
		return u, fmt.Errorf("durable: invalid UUID %q", s)
	}
	return u, nil
}

// newUUID returns a random (version 4) UUID.
func newUUID() UUID {
	var u UUID
	_, _ = rand.Read(u[:])
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	return u
}

// String returns the canonical form.
func (u UUID) String() string {
	var b [36]byte
	hex.Encode(b[0:8], u[0:4])
	b[8] = '-'
	hex.Encode(b[9:13], u[4:6])
	b[13] = '-'
	hex.Encode(b[14:18], u[6:8])
	b[18] = '-'
	hex.Encode(b[19:23], u[8:10])
	b[23] = '-'
	hex.Encode(b[24:], u[10:])
	return string(b[:])
}

// IsZero reports whether u is the zero UUID.
func (u UUID) IsZero() bool { return u == UUID{} }

// MarshalText implements encoding.TextMarshaler.
func (u UUID) MarshalText() ([]byte, error) { return []byte(u.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (u *UUID) UnmarshalText(b []byte) error {
	p, err := ParseUUID(string(b))
	if err != nil {
		return err
	}
	*u = p
	return nil
}

// UUIDValue implements pgtype.UUIDValuer.
func (u UUID) UUIDValue() (pgtype.UUID, error) { return pgtype.UUID{Bytes: u, Valid: true}, nil }

// ScanUUID implements pgtype.UUIDScanner.
func (u *UUID) ScanUUID(v pgtype.UUID) error {
	if !v.Valid {
		*u = UUID{}
		return nil
	}
	*u = v.Bytes
	return nil
}
