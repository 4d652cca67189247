package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	gatewayv1 "github.com/planetxlabs/dasset-gateway/proto/dasset/gateway/v1"
)

// BindCode asks the gateway for a short-lived binding code with the device
// token the last login left in cfg.StateDir. Only Gateway, StateDir and the
// TLS fields of cfg are used; of several gateways, each is asked in turn
// until one answers.
func BindCode(ctx context.Context, cfg Config) (code, uri string, expires time.Time, err error) {
	if cfg.StateDir == "" {
		cfg.StateDir = DefaultStateDir
	}
	gateways, err := ParseGateways(cfg.Gateway)
	if err != nil {
		return "", "", time.Time{}, err
	}
	token, err := readToken(cfg.StateDir)
	if err != nil {
		return "", "", time.Time{}, err
	}
	for _, g := range gateways {
		code, uri, expires, err = bindCodeFrom(ctx, g, cfg.tlsOptions(), token)
		if !unreachableCode(err) || ctx.Err() != nil {
			break
		}
	}
	return code, uri, expires, err
}

func bindCodeFrom(ctx context.Context, gateway string, opts TLSOptions, token string) (code, uri string, expires time.Time, err error) {
	conn, err := Dial(gateway, opts)
	if err != nil {
		return "", "", time.Time{}, err
	}
	defer conn.Close()
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	resp, err := gatewayv1.NewDeviceServiceClient(conn).CreateBindingCode(ctx, &gatewayv1.CreateBindingCodeRequest{})
	if err != nil {
		st := status.Convert(err)
		if unreachableCode(err) {
			return "", "", time.Time{}, fmt.Errorf("binding code: gateway %s: %w", gateway, err)
		}
		if st.Code() == codes.Unauthenticated {
			return "", "", time.Time{}, fmt.Errorf("binding code: the gateway does not accept the device token (is `dasset-agent up` running?): %s", st.Message())
		}
		return "", "", time.Time{}, fmt.Errorf("binding code: %s: %s", st.Code(), st.Message())
	}
	if resp.GetCode() == "" {
		return "", "", time.Time{}, errors.New("binding code: the gateway sent an empty code")
	}
	return resp.GetCode(), resp.GetUri(), resp.GetExpiresAt().AsTime(), nil
}
