package cri

import (
	"context"
	"time"

	"github.com/sirupsen/logrus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
)

// The kubelet polls several calls a second, so logging is at debug level and
// skipped entirely (no fields built) when debug is off.

func unaryLogger(log *logrus.Entry) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if !log.Logger.IsLevelEnabled(logrus.DebugLevel) {
			return handler(ctx, req)
		}
		start := time.Now()
		resp, err := handler(ctx, req)
		logCall(log, info.FullMethod, start, err)
		return resp, err
	}
}

func streamLogger(log *logrus.Entry) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if !log.Logger.IsLevelEnabled(logrus.DebugLevel) {
			return handler(srv, ss)
		}
		start := time.Now()
		err := handler(srv, ss)
		logCall(log, info.FullMethod, start, err)
		return err
	}
}

func logCall(log *logrus.Entry, method string, start time.Time, err error) {
	e := log.WithFields(logrus.Fields{"method": method, "duration": time.Since(start)})
	if err != nil {
		// NotFound and friends are normal answers to the kubelet, hence debug too.
		st := status.Convert(err)
		e = e.WithFields(logrus.Fields{"code": st.Code().String(), "error": st.Message()})
	}
	e.Debug("cri call")
}
