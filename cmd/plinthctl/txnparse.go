package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/spf13/pflag"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// The txn input format is etcdctl's:
//
//	<compare>*    one per line, e.g. mod("key1") > "0"
//	<blank line>
//	<op>*         success ops: put/get/del lines with their flags
//	<blank line>
//	<op>*         failure ops
//	<blank line>
//
// A compare is target("key") op value, where target is ver|version, c|create,
// m|mod, val|value or lease, op is =, !=, < or >, the key and a value are
// Go-quoted strings, and revisions, versions and lease IDs may be quoted or
// bare. Lease IDs are hexadecimal, as "lease grant" prints them (etcdctl
// panics on lease compares). Differences from etcdctl: the end of the input
// also ends a section (etcdctl fails with "EOF" when the last blank line is
// missing), and lines holding only spaces count as blank.

// txnRequest is a parsed transaction.
type txnRequest struct {
	cmps    []clientv3.Cmp
	success []clientv3.Op
	failure []clientv3.Op
}

// readTxn reads a transaction from r. prompt, when not nil, is called before
// each section with its title (interactive mode).
func readTxn(r io.Reader, prompt func(string)) (txnRequest, error) {
	lr := &lineReader{r: bufio.NewReader(r)}
	var t txnRequest
	if prompt != nil {
		prompt("compares:")
	}
	err := lr.section(func(line string) error {
		c, err := parseCompare(line)
		if err != nil {
			return err
		}
		t.cmps = append(t.cmps, c)
		return nil
	})
	if err != nil {
		return txnRequest{}, err
	}
	for _, s := range []struct {
		title string
		ops   *[]clientv3.Op
	}{
		{"success requests (get, put, del):", &t.success},
		{"failure requests (get, put, del):", &t.failure},
	} {
		if prompt != nil {
			prompt(s.title)
		}
		err := lr.section(func(line string) error {
			op, err := parseOp(line)
			if err != nil {
				return err
			}
			*s.ops = append(*s.ops, op)
			return nil
		})
		if err != nil {
			return txnRequest{}, err
		}
	}
	return t, nil
}

// lineReader reads the lines of a txn input and counts them for errors.
type lineReader struct {
	r   *bufio.Reader
	n   int
	eof bool
}

// section calls f with each line up to the next blank line or the end of the
// input.
func (lr *lineReader) section(f func(line string) error) error {
	for !lr.eof {
		line, err := lr.r.ReadString('\n')
		if errors.Is(err, io.EOF) {
			lr.eof = true
		} else if err != nil {
			return withCode(exitInvalidInput, fmt.Errorf("txn: read input: %w", err))
		}
		if line == "" && lr.eof {
			return nil
		}
		lr.n++
		line = strings.TrimRight(line, "\r\n")
		if strings.TrimSpace(line) == "" {
			return nil
		}
		if err := f(line); err != nil {
			return withCode(exitInvalidInput, fmt.Errorf("txn: line %d: %w", lr.n, err))
		}
	}
	return nil
}

// parseCompare parses one compare line, such as mod("key1") > "0".
func parseCompare(line string) (clientv3.Cmp, error) {
	s := strings.TrimSpace(line)
	open := strings.IndexByte(s, '(')
	if open < 0 {
		return clientv3.Cmp{}, fmt.Errorf("malformed comparison %q: want target(\"key\") op value", line)
	}
	target := strings.TrimSpace(s[:open])
	s = strings.TrimSpace(s[open+1:])
	key, s, err := quoted(s)
	if err != nil {
		return clientv3.Cmp{}, fmt.Errorf("malformed comparison %q: key: %w", line, err)
	}
	s = strings.TrimSpace(s)
	if !strings.HasPrefix(s, ")") {
		return clientv3.Cmp{}, fmt.Errorf("malformed comparison %q: want ) after the key", line)
	}
	s = strings.TrimSpace(s[1:])
	var op string
	for _, o := range []string{"!=", "=", "<", ">"} {
		if strings.HasPrefix(s, o) {
			op = o
			break
		}
	}
	if op == "" || strings.HasPrefix(s, "==") {
		return clientv3.Cmp{}, fmt.Errorf("malformed comparison %q: want one of =, !=, <, > after the key", line)
	}
	s = strings.TrimSpace(s[len(op):])
	var value string
	if strings.HasPrefix(s, `"`) {
		value, s, err = quoted(s)
		if err != nil {
			return clientv3.Cmp{}, fmt.Errorf("malformed comparison %q: value: %w", line, err)
		}
	} else {
		value, s, _ = strings.Cut(s, " ")
	}
	if strings.TrimSpace(s) != "" {
		return clientv3.Cmp{}, fmt.Errorf("malformed comparison %q: unexpected %q after the value", line, strings.TrimSpace(s))
	}

	switch target {
	case "val", "value":
		return clientv3.Compare(clientv3.Value(key), op, value), nil
	case "lease":
		id, err := parseLeaseID(value)
		if err != nil {
			return clientv3.Cmp{}, fmt.Errorf("malformed comparison %q: lease ID %q is not hexadecimal", line, value)
		}
		return clientv3.Compare(clientv3.LeaseValue(key), op, int64(id)), nil
	}
	cmpOf := map[string]func(string) clientv3.Cmp{
		"ver": clientv3.Version, "version": clientv3.Version,
		"c": clientv3.CreateRevision, "create": clientv3.CreateRevision,
		"m": clientv3.ModRevision, "mod": clientv3.ModRevision,
	}[target]
	if cmpOf == nil {
		return clientv3.Cmp{}, fmt.Errorf("malformed comparison %q: unknown target %q (ver, version, c, create, m, mod, val, value, lease)", line, target)
	}
	n, err := strconv.ParseInt(value, 10, 64)
	if err != nil {
		return clientv3.Cmp{}, fmt.Errorf("malformed comparison %q: %q is not an integer", line, value)
	}
	return clientv3.Compare(cmpOf(key), op, n), nil
}

// quoted reads the Go-quoted string at the start of s and returns it
// unquoted with the rest of s.
func quoted(s string) (string, string, error) {
	q, err := strconv.QuotedPrefix(s)
	if err != nil || !strings.HasPrefix(q, `"`) {
		return "", "", fmt.Errorf("want a double-quoted string at %q", s)
	}
	u, err := strconv.Unquote(q)
	if err != nil {
		return "", "", fmt.Errorf("unquote %s: %w", q, err)
	}
	return u, s[len(q):], nil
}

// parseOp parses one request line of a txn: put, get or del with the same
// arguments and flags as the commands of those names.
func parseOp(line string) (clientv3.Op, error) {
	words, err := splitArgs(line)
	if err != nil {
		return clientv3.Op{}, err
	}
	if len(words) == 0 {
		return clientv3.Op{}, fmt.Errorf("empty request")
	}
	fs := pflag.NewFlagSet(words[0], pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var build func(args []string) (clientv3.Op, error)
	switch words[0] {
	case "get":
		var f getFlags
		f.bind(fs)
		build = func(args []string) (clientv3.Op, error) {
			key, opts, err := f.request(args)
			return clientv3.OpGet(key, opts...), err
		}
	case "put":
		var f putFlags
		f.bind(fs)
		build = func(args []string) (clientv3.Op, error) {
			key, value, opts, err := f.request(args, nil)
			return clientv3.OpPut(key, value, opts...), err
		}
	case "del", "delete":
		var f delFlags
		f.bind(fs)
		build = func(args []string) (clientv3.Op, error) {
			key, opts, err := f.request(args)
			return clientv3.OpDelete(key, opts...), err
		}
	default:
		return clientv3.Op{}, fmt.Errorf("unknown request %q (want get, put or del)", words[0])
	}
	if err := fs.Parse(words[1:]); err != nil {
		return clientv3.Op{}, fmt.Errorf("%s: %w", words[0], err)
	}
	op, err := build(fs.Args())
	if err != nil {
		return clientv3.Op{}, err
	}
	return op, nil
}

// splitArgs splits a txn request line into words the way a shell would for
// simple cases: words are separated by spaces or tabs; a double-quoted part
// is a Go string literal (so "a\nb" holds a newline) and a single-quoted part
// is taken literally. Quoted and bare parts next to each other join into one
// word.
func splitArgs(line string) ([]string, error) {
	var words []string
	var cur strings.Builder
	inWord := false
	for s := line; s != ""; {
		switch c := s[0]; {
		case c == ' ' || c == '\t':
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
			s = s[1:]
		case c == '"':
			u, rest, err := quoted(s)
			if err != nil {
				return nil, err
			}
			cur.WriteString(u)
			inWord, s = true, rest
		case c == '\'':
			end := strings.IndexByte(s[1:], '\'')
			if end < 0 {
				return nil, fmt.Errorf("unterminated single quote at %q", s)
			}
			cur.WriteString(s[1 : 1+end])
			inWord, s = true, s[2+end:]
		default:
			cur.WriteByte(c)
			inWord, s = true, s[1:]
		}
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words, nil
}
