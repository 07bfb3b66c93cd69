package api

import (
	"io"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// BackupSource makes backups for Maintenance.Snapshot.
type BackupSource interface {
	// Backup returns a whole backup file (package backup) to stream and
	// its size; closing it releases it.
	Backup() (io.ReadCloser, int64, error)
}

// snapshotChunk is the most blob bytes one Snapshot response carries.
const snapshotChunk = 32 << 10

// Snapshot implements Maintenance.Snapshot: a backup of this member's state
// machine, streamed in chunks that say how many bytes remain. The stream
// ends with the backup's SHA-256, as etcd's ends with its backend's, so
// `etcdctl snapshot save` stores it, and `plinthctl snapshot restore`
// restores it.
func (m *Maintenance) Snapshot(req *pb.SnapshotRequest, stream pb.Maintenance_SnapshotServer) error {
	src, ok := m.src.(BackupSource)
	if !ok {
		return m.UnimplementedMaintenanceServer.Snapshot(req, stream)
	}
	r, size, err := src.Backup()
	if err != nil {
		return status.Errorf(codes.Internal, "etcdserver: make snapshot: %v", err)
	}
	defer r.Close()
	version := m.src.Status().Version
	buf := make([]byte, snapshotChunk)
	sent := int64(0)
	for first := true; sent < size; first = false {
		n, err := io.ReadFull(r, buf[:min(int64(len(buf)), size-sent)])
		if err != nil {
			return status.Errorf(codes.Internal, "etcdserver: read snapshot: %v", err)
		}
		sent += int64(n)
		resp := &pb.SnapshotResponse{RemainingBytes: uint64(size - sent), Blob: buf[:n], Version: version}
		if first {
			resp.Header = &pb.ResponseHeader{}
			m.src.FillHeader(resp.Header)
		}
		if err := stream.Send(resp); err != nil {
			return err
		}
	}
	return nil
}
