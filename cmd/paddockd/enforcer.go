package main

import (
	"context"

	"github.com/paddock-sandbox/paddock/enforcer"
)

// newEnforcer creates the data path paddockd drives, in paddockd's network
// namespace: policy routing, transparent listeners, the tcx redirect (or
// TPROXY) and the nftables table with its drop logger. Until the proxy
// serves the listeners, the default handlers log and refuse every
// redirected connection and DNS query; they stop when the data path closes.
func newEnforcer(cfg *Config) (enforcer.Enforcer, error) {
	o := enforcer.Options{
		Mode:       cfg.Redirect,
		BPFFSDir:   cfg.BPFFSDir,
		TCPListen:  cfg.TCPListen,
		DNSListen:  cfg.DNSListen,
		NFLOGGroup: uint16(cfg.NFLOGGroup),
		TapGroup:   uint16(cfg.NFLOGTapGroup),
		LogDir:     cfg.LogDir,
		Lookup:     cfg.Registry.ByIP,
		ByIfIndex:  cfg.Registry.ByIfIndex,
		Logger:     cfg.Logger,
	}
	if cfg.Metrics != nil {
		o.Metrics = cfg.Metrics
	}
	dp, err := enforcer.New(context.Background(), o)
	if err != nil {
		return nil, err
	}
	go dp.ServeDefault(context.Background())
	return dp, nil
}
