package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"time"
)

// ErrNotFound is returned when paddockd does not know the sandbox.
var ErrNotFound = errors.New("sandbox not registered")

// ErrUnknownPolicy is returned by Register when the sandbox names a policy
// that paddockd has no file for.
var ErrUnknownPolicy = errors.New("unknown policy")

// ErrUnavailable wraps every failure to reach paddockd at all (socket
// missing, connection refused, timeout): the caller may try again later.
var ErrUnavailable = errors.New("paddockd unavailable")

// Client talks to paddockd over its Unix socket.
type Client struct {
	Socket string
	hc     *http.Client
}

// NewClient returns a client for the API socket at path (DefaultSocket if empty).
func NewClient(path string) *Client {
	if path == "" {
		path = DefaultSocket
	}
	d := net.Dialer{Timeout: 3 * time.Second}
	return &Client{
		Socket: path,
		hc: &http.Client{
			Timeout: 30 * time.Second,
			Transport: &http.Transport{
				DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
					return d.DialContext(ctx, "unix", path)
				},
				DisableKeepAlives: true,
			},
		},
	}
}

// Register adds (or replaces) a sandbox and returns it as paddockd stored it.
func (c *Client) Register(ctx context.Context, sb Sandbox) (Sandbox, error) {
	var out Sandbox
	err := c.do(ctx, http.MethodPost, "/v1/sandboxes", sb, &out)
	return out, err
}

// Unregister removes a sandbox; a sandbox that is not registered is not an error.
func (c *Client) Unregister(ctx context.Context, k Key) error {
	err := c.do(ctx, http.MethodDelete, keyPath(k), nil, nil)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	return err
}

// Get returns one sandbox with its enforcement state, or ErrNotFound.
func (c *Client) Get(ctx context.Context, k Key) (SandboxStatus, error) {
	var out SandboxStatus
	err := c.do(ctx, http.MethodGet, keyPath(k), nil, &out)
	return out, err
}

// List returns every registered sandbox.
func (c *Client) List(ctx context.Context) ([]SandboxStatus, error) {
	var out []SandboxStatus
	err := c.do(ctx, http.MethodGet, "/v1/sandboxes", nil, &out)
	return out, err
}

// Status returns paddockd's health.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var out Status
	err := c.do(ctx, http.MethodGet, "/v1/status", nil, &out)
	return out, err
}

// GC removes every sandbox of req.Network not listed in req.Valid.
func (c *Client) GC(ctx context.Context, req GCRequest) (GCResponse, error) {
	var out GCResponse
	err := c.do(ctx, http.MethodPost, "/v1/gc", req, &out)
	return out, err
}

func keyPath(k Key) string {
	return "/v1/sandboxes/" + url.PathEscape(k.Network) + "/" + url.PathEscape(k.ContainerID) + "/" + url.PathEscape(k.IfName)
}

// remoteError is paddockd's own message, classified for errors.Is; the
// message already names the kind, so it is not repeated.
type remoteError struct {
	msg  string
	kind error
}

func (e remoteError) Error() string { return e.msg }
func (e remoteError) Unwrap() error { return e.kind }

// apiError is the body of every non-2xx answer.
type apiError struct {
	Error string `json:"error"`
}

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("encode request: %w", err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://paddockd"+path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("%w at %s: %v", ErrUnavailable, c.Socket, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("%w at %s: read answer: %v", ErrUnavailable, c.Socket, err)
	}
	if resp.StatusCode == http.StatusNotFound {
		return ErrNotFound
	}
	if resp.StatusCode == http.StatusUnprocessableEntity {
		var e apiError
		_ = json.Unmarshal(data, &e)
		return remoteError{msg: "paddockd: " + e.Error, kind: ErrUnknownPolicy}
	}
	if resp.StatusCode/100 != 2 {
		var e apiError
		if json.Unmarshal(data, &e) == nil && e.Error != "" {
			return fmt.Errorf("paddockd: %s", e.Error)
		}
		return fmt.Errorf("paddockd: %s", resp.Status)
	}
	if out != nil && len(data) > 0 {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("decode answer from paddockd: %w", err)
		}
	}
	return nil
}
