package api

import (
	"context"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

// Auth serves the part of etcd's Auth service that holds without users:
// AuthStatus, which says that authentication is off, as a fresh etcd says it.
// plinth has no users, roles or tokens yet; every other method answers
// codes.Unimplemented, and authentication cannot be turned on.
type Auth struct {
	pb.UnimplementedAuthServer
	b Backend
}

// NewAuth returns the Auth service over b.
func NewAuth(b Backend) *Auth { return &Auth{b: b} }

// authRevision is the revision of etcd's auth store before its first change,
// which is where plinth's stays.
const authRevision = 1

// AuthStatus implements Auth.AuthStatus.
func (a *Auth) AuthStatus(ctx context.Context, req *pb.AuthStatusRequest) (*pb.AuthStatusResponse, error) {
	resp := &pb.AuthStatusResponse{Header: &pb.ResponseHeader{}, Enabled: false, AuthRevision: authRevision}
	a.b.FillHeader(resp.Header)
	return resp, nil
}
