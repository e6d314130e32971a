// Package tools holds developer commands: the test-world helper, BPF
// regeneration and the benchmark harness.
package tools
