// Package chaos holds durable's fault test: spawner and worker processes
// sharing one event stream on a server of their own, while a driver kills
// workers with SIGKILL and crashes the server once. Everything is in its
// tests: go test ./internal/chaos (flags -chaos.*, see chaos_test.go), or
// make chaos for a large run.
package chaos
