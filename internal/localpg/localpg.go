// Package localpg starts a throwaway PostgreSQL server for the durable command
// when no DATABASE_URL is given. It does in Go what scripts/pg.sh does in
// shell: a fresh cluster in a temporary directory, trust authentication, a
// free port on 127.0.0.1, and everything removed by Stop.
package localpg

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Options tune Start. A nil *Options takes every default.
type Options struct {
	// PGBin is the directory holding initdb and pg_ctl. Defaults to $PG_BIN,
	// else the newest /usr/lib/postgresql/<version>/bin.
	PGBin string
	// Log receives progress lines (installing, starting). Defaults to none.
	Log io.Writer
	// MaxConnections is the server's max_connections. Defaults to 300.
	MaxConnections int
	// NoInstall forbids installing PostgreSQL with apt-get when it is missing.
	// Defaults to false: as root, Debian's postgresql-15 is installed.
	NoInstall bool
	// CrashSafe keeps synchronous_commit on, so that a crash of the server
	// (Restart, an immediate shutdown) loses no commit it acknowledged; the
	// operating system is assumed to survive, so fsync stays off. Defaults to
	// false: commits are acknowledged before their WAL is written.
	CrashSafe bool
}

// Server is a running throwaway PostgreSQL server.
type Server struct {
	dir      string
	bin      string
	port     int
	settings string // the server's -o options
	asPG     []string
	stop     sync.Once
	errMu    sync.Mutex
	err      error
}

// Start creates a cluster in a new temporary directory and starts it on a
// free port of 127.0.0.1. Call Stop to shut it down and remove its files.
func Start(ctx context.Context, opts *Options) (*Server, error) {
	var o Options
	if opts != nil {
		o = *opts
	}
	if o.MaxConnections == 0 {
		o.MaxConnections = 300
	}
	logf := func(format string, args ...any) {
		if o.Log != nil {
			fmt.Fprintf(o.Log, format+"\n", args...)
		}
	}

	bin, err := findBin(ctx, o, logf)
	if err != nil {
		return nil, err
	}

	dir, err := os.MkdirTemp("", "durable-pg-")
	if err != nil {
		return nil, fmt.Errorf("localpg: %w", err)
	}
	s := &Server{dir: dir, bin: bin}
	ok := false
	defer func() {
		if !ok {
			_ = os.RemoveAll(dir)
		}
	}()
	if err := os.Chmod(dir, 0o755); err != nil {
		return nil, fmt.Errorf("localpg: %w", err)
	}
	if os.Geteuid() == 0 {
		// initdb refuses to run as root: the cluster belongs to the postgres
		// OS user, which Debian's package creates.
		u, err := user.Lookup("postgres")
		if err != nil {
			return nil, fmt.Errorf("localpg: running as root needs a 'postgres' OS user to own the cluster: %w", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(dir, uid, gid); err != nil {
			return nil, fmt.Errorf("localpg: %w", err)
		}
		s.asPG = []string{"runuser", "-u", "postgres", "--"}
	}

	data := filepath.Join(dir, "data")
	if out, err := s.run(ctx, "initdb", "-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C.UTF-8"); err != nil {
		return nil, fmt.Errorf("localpg: initdb: %w\n%s", err, out)
	}

	// A free port can be taken between the probe and the server's bind, so a
	// failed start is retried on another port.
	var startErr error
	for range 3 {
		port, err := freePort()
		if err != nil {
			return nil, fmt.Errorf("localpg: find a free port: %w", err)
		}
		syncCommit := "off"
		if o.CrashSafe {
			syncCommit = "on"
		}
		settings := fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1 -c max_connections=%d"+
			" -c shared_buffers=128MB -c fsync=off -c synchronous_commit=%s -c full_page_writes=off",
			port, dir, o.MaxConnections, syncCommit)
		logf("localpg: starting PostgreSQL (%s) on 127.0.0.1:%d in %s", bin, port, dir)
		_, startErr = s.run(ctx, "pg_ctl", "-D", data, "-l", filepath.Join(dir, "server.log"), "-w", "-t", "60", "-o", settings, "start")
		if startErr == nil {
			s.port = port
			s.settings = settings
			ok = true
			return s, nil
		}
		if ctx.Err() != nil {
			break
		}
	}
	serverLog, _ := os.ReadFile(filepath.Join(dir, "server.log"))
	return nil, fmt.Errorf("localpg: pg_ctl start: %w\n%s", startErr, serverLog)
}

// URL returns the connection string of the server's postgres database.
func (s *Server) URL() string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", s.port)
}

// LogFile returns the path of the server's log.
func (s *Server) LogFile() string {
	return filepath.Join(s.dir, "server.log")
}

// Restart stops the server with an immediate shutdown (a crash: every
// connection is cut, no checkpoint is written) and starts it again on the same
// port, waiting until it accepts connections after crash recovery.
func (s *Server) Restart(ctx context.Context) error {
	data := filepath.Join(s.dir, "data")
	if out, err := s.run(ctx, "pg_ctl", "-D", data, "-m", "immediate", "-w", "-t", "60", "stop"); err != nil {
		return fmt.Errorf("localpg: pg_ctl stop: %w\n%s", err, out)
	}
	if out, err := s.run(ctx, "pg_ctl", "-D", data, "-l", filepath.Join(s.dir, "server.log"), "-w", "-t", "60", "-o", s.settings, "start"); err != nil {
		serverLog, _ := os.ReadFile(filepath.Join(s.dir, "server.log"))
		return fmt.Errorf("localpg: pg_ctl start: %w\n%s\n%s", err, out, serverLog)
	}
	return nil
}

// Stop shuts the server down at once (no checkpoint: its files are about to
// go) and removes its directory. Calling it again returns the first result.
func (s *Server) Stop() error {
	s.stop.Do(func() {
		var errs []error
		if out, err := s.run(context.Background(), "pg_ctl", "-D", filepath.Join(s.dir, "data"), "-m", "immediate", "stop"); err != nil {
			errs = append(errs, fmt.Errorf("localpg: pg_ctl stop: %w\n%s", err, out))
		}
		if err := os.RemoveAll(s.dir); err != nil {
			errs = append(errs, fmt.Errorf("localpg: %w", err))
		}
		s.errMu.Lock()
		s.err = errors.Join(errs...)
		s.errMu.Unlock()
	})
	s.errMu.Lock()
	defer s.errMu.Unlock()
	return s.err
}

// run runs one of the server's programs, as the postgres OS user when we are
// root, and returns its combined output.
func (s *Server) run(ctx context.Context, program string, args ...string) ([]byte, error) {
	argv := append(slices.Clone(s.asPG), filepath.Join(s.bin, program))
	argv = append(argv, args...)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	// The server that pg_ctl start leaves behind writes to its log file, not
	// to our pipe; should it ever hold the pipe open, stop waiting for it
	// shortly after pg_ctl itself has exited.
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	return out.Bytes(), err
}

// findBin returns the directory of initdb and pg_ctl, installing Debian's
// postgresql-15 when none is found and we are root.
func findBin(ctx context.Context, o Options, logf func(string, ...any)) (string, error) {
	if o.PGBin != "" {
		return checkBin(o.PGBin)
	}
	if env := os.Getenv("PG_BIN"); env != "" {
		return checkBin(env)
	}
	if bin := newestInstalled(); bin != "" {
		return bin, nil
	}
	if o.NoInstall || os.Geteuid() != 0 {
		return "", errors.New("localpg: no PostgreSQL server found in /usr/lib/postgresql/*/bin; " +
			"install it (apt-get install postgresql-15), set PG_BIN to the directory of initdb and pg_ctl, " +
			"or set DATABASE_URL to use a running server")
	}
	logf("localpg: installing postgresql-15 with apt-get ...")
	env := append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	for _, args := range [][]string{{"update", "-qq"}, {"install", "-y", "-qq", "postgresql-15"}} {
		cmd := exec.CommandContext(ctx, "apt-get", args...)
		cmd.Env = env
		if out, err := cmd.CombinedOutput(); err != nil {
			return "", fmt.Errorf("localpg: apt-get %s: %w\n%s", strings.Join(args, " "), err, out)
		}
	}
	if bin := newestInstalled(); bin != "" {
		return bin, nil
	}
	return "", errors.New("localpg: postgresql-15 was installed but no initdb was found in /usr/lib/postgresql/*/bin")
}

func checkBin(dir string) (string, error) {
	for _, p := range []string{"initdb", "pg_ctl"} {
		if _, err := os.Stat(filepath.Join(dir, p)); err != nil {
			return "", fmt.Errorf("localpg: PG_BIN %s has no %s: %w", dir, p, err)
		}
	}
	return dir, nil
}

// newestInstalled returns the bin directory of the highest PostgreSQL major
// version under /usr/lib/postgresql that has initdb and pg_ctl, or "".
func newestInstalled() string {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	best, bestVersion := "", -1.0
	for _, d := range dirs {
		v, err := strconv.ParseFloat(filepath.Base(filepath.Dir(d)), 64)
		if err != nil {
			continue
		}
		if _, err := checkBin(d); err != nil {
			continue
		}
		if v > bestVersion {
			best, bestVersion = d, v
		}
	}
	return best
}

// freePort asks the kernel for a free TCP port on 127.0.0.1.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
