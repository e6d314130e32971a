package api

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
)

// Backend is what paddockd implements behind the API socket.
type Backend interface {
	Register(ctx context.Context, sb Sandbox) (Sandbox, error)
	Unregister(ctx context.Context, k Key) error // ErrNotFound if unknown
	Get(ctx context.Context, k Key) (SandboxStatus, error)
	List(ctx context.Context) ([]SandboxStatus, error)
	Status(ctx context.Context) Status
	GC(ctx context.Context, req GCRequest) (GCResponse, error)
}

// Handler serves the paddockd API for b.
func Handler(b Backend) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/sandboxes", func(w http.ResponseWriter, r *http.Request) {
		var sb Sandbox
		if !decode(w, r, &sb) {
			return
		}
		if err := sb.Key().Validate(); err != nil {
			writeErr(w, http.StatusBadRequest, err)
			return
		}
		out, err := b.Register(r.Context(), sb)
		reply(w, out, err)
	})
	mux.HandleFunc("GET /v1/sandboxes", func(w http.ResponseWriter, r *http.Request) {
		out, err := b.List(r.Context())
		if out == nil {
			out = []SandboxStatus{}
		}
		reply(w, out, err)
	})
	mux.HandleFunc("GET /v1/sandboxes/{network}/{cid}/{ifname}", func(w http.ResponseWriter, r *http.Request) {
		out, err := b.Get(r.Context(), pathKey(r))
		reply(w, out, err)
	})
	mux.HandleFunc("DELETE /v1/sandboxes/{network}/{cid}/{ifname}", func(w http.ResponseWriter, r *http.Request) {
		err := b.Unregister(r.Context(), pathKey(r))
		reply(w, struct{}{}, err)
	})
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		reply(w, b.Status(r.Context()), nil)
	})
	mux.HandleFunc("POST /v1/gc", func(w http.ResponseWriter, r *http.Request) {
		var req GCRequest
		if !decode(w, r, &req) {
			return
		}
		out, err := b.GC(r.Context(), req)
		reply(w, out, err)
	})
	return mux
}

func pathKey(r *http.Request) Key {
	return Key{Network: r.PathValue("network"), ContainerID: r.PathValue("cid"), IfName: r.PathValue("ifname")}
}

func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(io.LimitReader(r.Body, 1<<20))
	if err := dec.Decode(v); err != nil {
		writeErr(w, http.StatusBadRequest, err)
		return false
	}
	return true
}

func reply(w http.ResponseWriter, v any, err error) {
	switch {
	case errors.Is(err, ErrNotFound):
		writeErr(w, http.StatusNotFound, err)
	case errors.Is(err, ErrUnknownPolicy):
		writeErr(w, http.StatusUnprocessableEntity, err)
	case err != nil:
		writeErr(w, http.StatusInternalServerError, err)
	default:
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(v)
	}
}

func writeErr(w http.ResponseWriter, code int, err error) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(apiError{Error: err.Error()})
}
