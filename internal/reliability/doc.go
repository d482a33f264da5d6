// Package reliability holds the end-to-end reliability suite of issue 17: it builds the sgsim binary and
// runs `sgsim serve` as a separate process against damaged stores, SIGKILLs under load, a full disk and
// a frozen disk, checking only what the process answers over HTTP and prints, never its internals. The
// package has no code of its own; `make soak` runs the same tests longer (SGSIM_SOAK=1).
package reliability
