package api

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"runtime/debug"
	"sync"

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/logging"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/recovery"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/encoding"
	protoenc "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"
)

type requestIDKey struct{}

// RequestID returns the id the interceptor gave this call.
func RequestID(ctx context.Context) string {
	id, _ := ctx.Value(requestIDKey{}).(string)
	return id
}

func newRequestID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// ServerMetrics are the gRPC server metrics (go-grpc-middleware's provider),
// registered once and shared by every listener.
func ServerMetrics(reg prometheus.Registerer) *grpcprom.ServerMetrics {
	m := grpcprom.NewServerMetrics(grpcprom.WithServerHandlingTimeHistogram(
		grpcprom.WithHistogramBuckets([]float64{.001, .005, .01, .05, .1, .5, 1, 5}),
	))
	reg.MustRegister(m)
	return m
}

// NewServer makes a gRPC server with the project's interceptors: a request id
// on every call, InvalidArgument for a request that does not decode, a log
// line per call (slog, no request payloads), panic recovery (Internal, with
// the stack in the log only), metrics, and the guard's access table.
func NewServer(log *slog.Logger, m *grpcprom.ServerMetrics, creds credentials.TransportCredentials, guard Guard, opts ...grpc.ServerOption) *grpc.Server {
	lg := logging.LoggerFunc(func(ctx context.Context, lvl logging.Level, msg string, fields ...any) {
		log.Log(ctx, slog.Level(lvl), msg, fields...)
	})
	logOpts := []logging.Option{
		logging.WithLogOnEvents(logging.FinishCall),
		logging.WithFieldsFromContext(func(ctx context.Context) logging.Fields {
			return logging.Fields{"request_id", RequestID(ctx)}
		}),
		logging.WithLevels(func(c codes.Code) logging.Level {
			switch c {
			case codes.OK, codes.Canceled:
				return logging.LevelDebug
			case codes.Internal, codes.Unknown, codes.DataLoss:
				return logging.LevelError
			default:
				return logging.LevelInfo
			}
		}),
	}
	rec := recovery.WithRecoveryHandlerContext(func(ctx context.Context, p any) error {
		log.ErrorContext(ctx, "panic in gRPC handler", "request_id", RequestID(ctx), "panic", p, "stack", string(debug.Stack()))
		return status.Error(codes.Internal, "internal error")
	})
	idUnary := func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		return h(context.WithValue(ctx, requestIDKey{}, newRequestID()), req)
	}
	idStream := func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		return h(srv, &idStream{ServerStream: ss, ctx: context.WithValue(ss.Context(), requestIDKey{}, newRequestID())})
	}
	codec := &decodeCodec{CodecV2: encoding.GetCodecV2(protoenc.Name)}
	all := append([]grpc.ServerOption{
		grpc.Creds(creds),
		grpc.ForceServerCodecV2(codec),
		grpc.ChainUnaryInterceptor(codec.unary, idUnary, m.UnaryServerInterceptor(), logging.UnaryServerInterceptor(lg, logOpts...),
			recovery.UnaryServerInterceptor(rec), guard.Unary()),
		grpc.ChainStreamInterceptor(codec.stream, idStream, m.StreamServerInterceptor(), logging.StreamServerInterceptor(lg, logOpts...),
			recovery.StreamServerInterceptor(rec), guard.Stream()),
	}, opts...)
	s := grpc.NewServer(all...)
	return s
}

// decodeCodec is the proto codec, except that a request that does not
// decode (invalid UTF-8 in a string, truncated bytes) is remembered instead
// of failing inside grpc-go, which would answer Internal: the first
// interceptor answers InvalidArgument for it (and the handler never runs).
type decodeCodec struct {
	encoding.CodecV2
	bad sync.Map // message (pointer) → decode error
}

func (c *decodeCodec) Unmarshal(data mem.BufferSlice, v any) error {
	if err := c.CodecV2.Unmarshal(data, v); err != nil {
		c.bad.Store(v, err)
	}
	return nil
}

func (c *decodeCodec) check(v any) error {
	if err, ok := c.bad.LoadAndDelete(v); ok {
		return status.Error(codes.InvalidArgument, "request does not decode: "+err.(error).Error())
	}
	return nil
}

func (c *decodeCodec) unary(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	if err := c.check(req); err != nil {
		return nil, err
	}
	return h(ctx, req)
}

func (c *decodeCodec) stream(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	return h(srv, &decodeStream{ServerStream: ss, c: c})
}

type decodeStream struct {
	grpc.ServerStream
	c *decodeCodec
}

func (s *decodeStream) RecvMsg(m any) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		s.c.bad.Delete(m)
		return err
	}
	return s.c.check(m)
}

// EndStreamsOn ends every stream's context when done closes, so long-lived
// streams (Sync) return at shutdown and GracefulStop does not wait for them.
func EndStreamsOn(done <-chan struct{}) grpc.ServerOption {
	return grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		ctx, cancel := context.WithCancel(ss.Context())
		defer cancel()
		go func() {
			select {
			case <-done:
				cancel()
			case <-ctx.Done():
			}
		}()
		return h(srv, &idStream{ServerStream: ss, ctx: ctx})
	})
}

type idStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *idStream) Context() context.Context { return s.ctx }

// Finish registers health checking and reflection on s and initialises the
// server metrics for every registered method. Call after registering services.
func Finish(s *grpc.Server, m *grpcprom.ServerMetrics) *health.Server {
	h := health.NewServer()
	healthpb.RegisterHealthServer(s, h)
	reflection.Register(s)
	m.InitializeMetrics(s)
	return h
}
