package proxy

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"github.com/paddock-sandbox/paddock/plugin/api"
	"github.com/paddock-sandbox/paddock/proxy/policy"
)

// Verdict is the decision point's answer.
type Verdict struct {
	Allow  bool
	Rule   *policy.Rule // nil when no rule decided
	Reason string       // why it was denied, for the agent and the audit log
	Policy string
}

// RuleID names the deciding rule for audit lines ("egress[2]").
func (v Verdict) RuleID() string {
	if v.Rule == nil {
		return ""
	}
	return v.Rule.ID
}

// Decider is the decision point. It is consulted per connection (SNI, opaque
// TCP), per HTTP request and per DNS question.
type Decider interface {
	Decide(sb api.Sandbox, q policy.Query) Verdict
	DecideTCP(ctx context.Context, sb api.Sandbox, dst netip.AddrPort, target string) Verdict
	AllowsName(sb api.Sandbox, name string) Verdict
}

// StoreDecider decides with the policies of a policy.Store. A sandbox whose
// policy is missing is denied everything.
type StoreDecider struct {
	Store *policy.Store
	// Lookup resolves tcp rule names for opaque connections.
	Lookup func(ctx context.Context, host string) ([]netip.Addr, error)
}

func (d *StoreDecider) policy(sb api.Sandbox) (*policy.Policy, Verdict, bool) {
	p, ok := d.Store.Get(sb.Policy)
	if !ok {
		return nil, Verdict{Policy: sb.Policy, Reason: fmt.Sprintf("policy %q does not exist or does not parse: everything is denied", sb.Policy)}, false
	}
	return p, Verdict{}, true
}

func (d *StoreDecider) Decide(sb api.Sandbox, q policy.Query) Verdict {
	p, v, ok := d.policy(sb)
	if !ok {
		return v
	}
	dec := p.Decide(q)
	return Verdict{Allow: dec.Allow, Rule: dec.Rule, Reason: dec.Reason, Policy: p.Name}
}

func (d *StoreDecider) DecideTCP(ctx context.Context, sb api.Sandbox, dst netip.AddrPort, target string) Verdict {
	p, v, ok := d.policy(sb)
	if !ok {
		return v
	}
	resolve := func(host string) []netip.Addr {
		if d.Lookup == nil {
			return nil
		}
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		addrs, _ := d.Lookup(ctx, host)
		return addrs
	}
	dec := p.DecideTCP(dst, target, resolve)
	return Verdict{Allow: dec.Allow, Rule: dec.Rule, Reason: dec.Reason, Policy: p.Name}
}

func (d *StoreDecider) AllowsName(sb api.Sandbox, name string) Verdict {
	p, v, ok := d.policy(sb)
	if !ok {
		return v
	}
	allow, r := p.AllowsName(name)
	v = Verdict{Allow: allow, Rule: r, Policy: p.Name}
	if !allow {
		v.Reason = "no rule names this domain"
		if r != nil {
			v.Reason = "denied by " + r.ID
		}
	}
	return v
}
