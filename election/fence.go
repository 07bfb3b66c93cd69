package election

import (
	"context"
	"errors"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// ErrFenced is returned by a fenced write whose term of leadership is over:
// the server refused it because the leader's key no longer has the term's
// create revision (it was deleted when the lease ended, or another term began).
var ErrFenced = errors.New("election: fenced: the term of leadership this write was made under is over")

// Leadership is one term of leadership: the leader's key and its fencing
// token. Its writes are fenced: the server applies them only while the term
// lasts. It stays valid as a value after the term ended; its writes then fail
// with ErrFenced.
type Leadership struct {
	cli      *clientv3.Client
	key      string
	token    int64
	identity string
}

// Token is the term's fencing token: the create revision of the leader's
// key. A later term has a greater token.
func (l *Leadership) Token() int64 { return l.token }

// Key is the leader's key.
func (l *Leadership) Key() string { return l.key }

// Identity is the leader's identity (Config.Identity).
func (l *Leadership) Identity() string { return l.identity }

// Guard is the comparison that holds exactly while the term lasts, for txns
// built by hand. A txn whose comparisons include it cannot tell a lost term
// from its own comparisons failing; Txn can.
func (l *Leadership) Guard() clientv3.Cmp {
	return clientv3.Compare(clientv3.CreateRevision(l.key), "=", l.token)
}

// Txn returns a txn that the server runs only while the term lasts. It is
// built as any clientv3.Txn (If, Then, Else, Commit); its Commit returns
// ErrFenced when the term is over, and otherwise the answer of the txn as
// given (Succeeded says whether its own comparisons held). When it has
// comparisons or Else ops it is sent nested inside the guarded txn.
func (l *Leadership) Txn(ctx context.Context) clientv3.Txn {
	return &fencedTxn{l: l, ctx: ctx}
}

// Put writes key while the term lasts, or returns ErrFenced.
func (l *Leadership) Put(ctx context.Context, key, val string, opts ...clientv3.OpOption) (*clientv3.PutResponse, error) {
	resp, err := l.Txn(ctx).Then(clientv3.OpPut(key, val, opts...)).Commit()
	if err != nil {
		return nil, err
	}
	return (*clientv3.PutResponse)(resp.Responses[0].GetResponsePut()), nil
}

// Delete deletes key (or a range, with clientv3.WithPrefix or WithRange)
// while the term lasts, or returns ErrFenced.
func (l *Leadership) Delete(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.DeleteResponse, error) {
	resp, err := l.Txn(ctx).Then(clientv3.OpDelete(key, opts...)).Commit()
	if err != nil {
		return nil, err
	}
	return (*clientv3.DeleteResponse)(resp.Responses[0].GetResponseDeleteRange()), nil
}

// fencedTxn is a clientv3.Txn sent under a term's guard.
type fencedTxn struct {
	l       *Leadership
	ctx     context.Context // the Commit's, as clientv3.Txn keeps it
	cmps    []clientv3.Cmp
	thenOps []clientv3.Op
	elseOps []clientv3.Op
	ifSet   bool
	thenSet bool
	elseSet bool
}

// If, Then and Else may each be called once, and in that order, as with
// clientv3.Txn.
func (t *fencedTxn) If(cs ...clientv3.Cmp) clientv3.Txn {
	if t.ifSet || t.thenSet || t.elseSet {
		panic("election: fenced txn: If after If, Then or Else")
	}
	t.ifSet = true
	t.cmps = cs
	return t
}

func (t *fencedTxn) Then(ops ...clientv3.Op) clientv3.Txn {
	if t.thenSet || t.elseSet {
		panic("election: fenced txn: Then after Then or Else")
	}
	t.thenSet = true
	t.thenOps = ops
	return t
}

func (t *fencedTxn) Else(ops ...clientv3.Op) clientv3.Txn {
	if t.elseSet {
		panic("election: fenced txn: Else after Else")
	}
	t.elseSet = true
	t.elseOps = ops
	return t
}

func (t *fencedTxn) Commit() (*clientv3.TxnResponse, error) {
	nested := len(t.cmps) > 0 || len(t.elseOps) > 0
	txn := t.l.cli.Txn(t.ctx).If(t.l.Guard())
	if nested {
		txn = txn.Then(clientv3.OpTxn(t.cmps, t.thenOps, t.elseOps))
	} else {
		txn = txn.Then(t.thenOps...)
	}
	resp, err := txn.Commit()
	if err != nil {
		return nil, fmt.Errorf("election: fenced txn of term %d: %w", t.l.token, err)
	}
	if !resp.Succeeded {
		return nil, fmt.Errorf("%w (key %s, token %d)", ErrFenced, t.l.key, t.l.token)
	}
	if !nested {
		return resp, nil
	}
	inner := resp.Responses[0].GetResponseTxn()
	return &clientv3.TxnResponse{Header: resp.Header, Succeeded: inner.Succeeded, Responses: inner.Responses}, nil
}
