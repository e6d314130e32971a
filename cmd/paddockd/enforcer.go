package main

import (
	"context"
	"errors"

	"github.com/paddock-sandbox/paddock/enforcer"
	"github.com/paddock-sandbox/paddock/plugin/api"
)

// newEnforcer creates the data path paddockd drives. cfg carries the logger,
// the metrics registry and the sandbox registry (for per-connection lookups).
func newEnforcer(cfg *Config) (enforcer.Enforcer, error) {
	return noEnforcer{}, nil
}

// errNotBuilt is what every sandbox reports until the real data path lands:
// paddockd must never claim enforcement it does not do.
var errNotBuilt = errors.New("not built yet")

// noEnforcer accepts registrations and enforces nothing; Status is never
// Ready with it.
type noEnforcer struct{}

func (noEnforcer) Attach(context.Context, api.Sandbox) error      { return nil }
func (noEnforcer) Detach(context.Context, api.Sandbox) error      { return nil }
func (noEnforcer) Check(context.Context, api.Sandbox) error       { return errNotBuilt }
func (noEnforcer) Reconcile(context.Context, []api.Sandbox) error { return nil }
func (noEnforcer) Components() map[string]string {
	return map[string]string{"enforcer": errNotBuilt.Error()}
}
func (noEnforcer) Close() error { return nil }
