package main

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"
)

func cmpEqual(a, b clientv3.Cmp) bool {
	return proto.Equal(a.GetCompare(), b.GetCompare())
}

func TestParseCompare(t *testing.T) {
	tests := []struct {
		name string
		line string
		want clientv3.Cmp
	}{
		{"mod greater", `mod("key1") > "0"`, clientv3.Compare(clientv3.ModRevision("key1"), ">", 0)},
		{"m alias", `m("key1") < "12"`, clientv3.Compare(clientv3.ModRevision("key1"), "<", 12)},
		{"create equal", `create("k") = "0"`, clientv3.Compare(clientv3.CreateRevision("k"), "=", 0)},
		{"c alias", `c("k") != "3"`, clientv3.Compare(clientv3.CreateRevision("k"), "!=", 3)},
		{"version", `version("k") = "1"`, clientv3.Compare(clientv3.Version("k"), "=", 1)},
		{"ver alias", `ver("k") > "2"`, clientv3.Compare(clientv3.Version("k"), ">", 2)},
		{"value", `value("k") = "v"`, clientv3.Compare(clientv3.Value("k"), "=", "v")},
		{"val alias", `val("k") != "v w"`, clientv3.Compare(clientv3.Value("k"), "!=", "v w")},
		{"value with escapes", `value("a\"b") = "line1\nline2\x00"`, clientv3.Compare(clientv3.Value(`a"b`), "=", "line1\nline2\x00")},
		{"empty value", `value("k") = ""`, clientv3.Compare(clientv3.Value("k"), "=", "")},
		{"lease hex", `lease("k") = "694d7a5c5a5b1234"`, clientv3.Compare(clientv3.LeaseValue("k"), "=", int64(0x694d7a5c5a5b1234))},
		{"lease zero", `lease("k") = "0"`, clientv3.Compare(clientv3.LeaseValue("k"), "=", int64(0))},
		{"bare integer", `mod("k") > 5`, clientv3.Compare(clientv3.ModRevision("k"), ">", 5)},
		{"no spaces", `mod("k")>"5"`, clientv3.Compare(clientv3.ModRevision("k"), ">", 5)},
		{"extra spaces", `  mod ( "k" )  >   "5"  `, clientv3.Compare(clientv3.ModRevision("k"), ">", 5)},
		{"empty key", `version("") = "0"`, clientv3.Compare(clientv3.Version(""), "=", 0)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseCompare(tt.line)
			if err != nil {
				t.Fatalf("parseCompare(%q): %v", tt.line, err)
			}
			if !cmpEqual(got, tt.want) {
				t.Errorf("parseCompare(%q) = %v, want %v", tt.line, got.GetCompare(), tt.want.GetCompare())
			}
		})
	}
}

func TestParseCompareErrors(t *testing.T) {
	tests := []struct {
		name    string
		line    string
		wantErr string
	}{
		{"no parenthesis", `mod "k" > "0"`, "want target"},
		{"unquoted key", `mod(k) > "0"`, "key"},
		{"unterminated key", `mod("k) > "0"`, "want )"},
		{"missing close", `mod("k" > "0"`, "want )"},
		{"unknown target", `foo("k") > "0"`, `unknown target "foo"`},
		{"double equal", `mod("k") == "0"`, "want one of"},
		{"no operator", `mod("k") "0"`, "want one of"},
		{"not an integer", `mod("k") > "x"`, "not an integer"},
		{"lease not hex", `lease("k") = "zz"`, "not hexadecimal"},
		{"trailing text", `mod("k") > "0" and more`, "unexpected"},
		{"bad escape", `value("k") = "\q"`, "value"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseCompare(tt.line)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("parseCompare(%q) error = %v, want one containing %q", tt.line, err, tt.wantErr)
			}
		})
	}
}

func TestSplitArgs(t *testing.T) {
	tests := []struct {
		line string
		want []string
	}{
		{`put k v`, []string{"put", "k", "v"}},
		{"  put\tk   v  ", []string{"put", "k", "v"}},
		{`put key1 "overwrote-key1"`, []string{"put", "key1", "overwrote-key1"}},
		{`put "a b" "c\nd"`, []string{"put", "a b", "c\nd"}},
		{`put k 'single "quoted" \n'`, []string{"put", "k", `single "quoted" \n`}},
		{`put k ""`, []string{"put", "k", ""}},
		{`put pre"fix"post v`, []string{"put", "prefixpost", "v"}},
		{`get --prefix=true k`, []string{"get", "--prefix=true", "k"}},
		{``, nil},
	}
	for _, tt := range tests {
		t.Run(tt.line, func(t *testing.T) {
			got, err := splitArgs(tt.line)
			if err != nil {
				t.Fatalf("splitArgs(%q): %v", tt.line, err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("splitArgs(%q) = %q, want %q", tt.line, got, tt.want)
			}
		})
	}
	for _, bad := range []string{`put "k`, `put 'k`, `put "\q"`} {
		if got, err := splitArgs(bad); err == nil {
			t.Errorf("splitArgs(%q) = %q, want an error", bad, got)
		}
	}
}

func TestParseOp(t *testing.T) {
	tests := []struct {
		name string
		line string
		want clientv3.Op
	}{
		{"put", `put k v`, clientv3.OpPut("k", "v")},
		{"put quoted", `put "a b" "c d"`, clientv3.OpPut("a b", "c d")},
		{"put prev-kv", `put k v --prev-kv`, clientv3.OpPut("k", "v", clientv3.WithPrevKV())},
		{"put lease hex", `put --lease=694d k v`, clientv3.OpPut("k", "v", clientv3.WithLease(0x694d))},
		{"put ignore-value", `put k --ignore-value`, clientv3.OpPut("k", "", clientv3.WithIgnoreValue())},
		{"put ignore-lease", `put k v --ignore-lease`, clientv3.OpPut("k", "v", clientv3.WithIgnoreLease())},
		{"put dash value", `put k -- -v`, clientv3.OpPut("k", "-v")},
		{"get", `get k`, clientv3.OpGet("k")},
		{"get range", `get a c`, clientv3.OpGet("a", clientv3.WithRange("c"))},
		{"get prefix", `get --prefix k`, clientv3.OpGet("k", clientv3.WithPrefix())},
		{"get from-key", `get --from-key k`, clientv3.OpGet("k", clientv3.WithFromKey())},
		{"get everything", `get --prefix ""`, clientv3.OpGet("", clientv3.WithPrefix())},
		{"get options", `get k --limit 2 --rev 7 --keys-only --consistency=s`,
			clientv3.OpGet("k", clientv3.WithSerializable(), clientv3.WithLimit(2), clientv3.WithRev(7), clientv3.WithKeysOnly())},
		{"get count-only", `get k --count-only`, clientv3.OpGet("k", clientv3.WithCountOnly())},
		{"get sort", `get --prefix k --sort-by=modify --order=DESCEND`,
			clientv3.OpGet("k", clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByModRevision, clientv3.SortDescend))},
		{"get revision filters", `get --prefix k --min-create-rev 1 --max-create-rev 2 --min-mod-rev 3 --max-mod-rev 4`,
			clientv3.OpGet("k", clientv3.WithPrefix(), clientv3.WithMinCreateRev(1), clientv3.WithMaxCreateRev(2),
				clientv3.WithMinModRev(3), clientv3.WithMaxModRev(4))},
		{"del", `del k`, clientv3.OpDelete("k")},
		{"delete alias", `delete k`, clientv3.OpDelete("k")},
		{"del range", `del a c`, clientv3.OpDelete("a", clientv3.WithRange("c"))},
		{"del prefix prev-kv", `del --prefix --prev-kv k`, clientv3.OpDelete("k", clientv3.WithPrefix(), clientv3.WithPrevKV())},
		{"del from-key", `del --from-key k`, clientv3.OpDelete("k", clientv3.WithFromKey())},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseOp(tt.line)
			if err != nil {
				t.Fatalf("parseOp(%q): %v", tt.line, err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("parseOp(%q) = %+v, want %+v", tt.line, got, tt.want)
			}
		})
	}
}

func TestParseOpErrors(t *testing.T) {
	tests := []struct {
		name    string
		line    string
		wantErr string
	}{
		{"unknown request", `watch k`, `unknown request "watch"`},
		{"put without value", `put k`, "put command needs"},
		{"put too many", `put k v w`, "put command needs"},
		{"put bad lease", `put k v --lease=zz`, "bad lease ID"},
		{"unknown flag", `put k v --nope`, "unknown flag: --nope"},
		{"get no key", `get`, "get command needs"},
		{"get prefix and from-key", `get --prefix --from-key k`, "cannot be set at the same time"},
		{"get prefix with range end", `get --prefix a b`, "too many arguments"},
		{"get keys-only and count-only", `get --keys-only --count-only k`, "cannot be set at the same time"},
		{"get bad sort", `get k --sort-by=SIZE`, "bad sort target"},
		{"get bad order", `get k --order=UP`, "bad sort order"},
		{"get bad consistency", `get k --consistency=x`, "unknown consistency"},
		{"del no key", `del`, "del command needs"},
		{"bad quoting", `put "k v`, "double-quoted"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseOp(tt.line)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("parseOp(%q) error = %v, want one containing %q", tt.line, err, tt.wantErr)
			}
		})
	}
}

func TestReadTxn(t *testing.T) {
	put := func(k, v string) clientv3.Op { return clientv3.OpPut(k, v) }
	tests := []struct {
		name  string
		input string
		want  txnRequest
	}{
		{
			name:  "etcdctl example",
			input: "mod(\"key1\") > \"0\"\n\nput key1 \"overwrote-key1\"\n\nput key1 \"created-key1\"\nput key2 \"some extra key\"\n\n",
			want: txnRequest{
				cmps:    []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision("key1"), ">", 0)},
				success: []clientv3.Op{put("key1", "overwrote-key1")},
				failure: []clientv3.Op{put("key1", "created-key1"), put("key2", "some extra key")},
			},
		},
		{
			name:  "several compares and a get",
			input: "value(\"k\") = \"v\"\nversion(\"k\") = \"1\"\n\nget k\ndel k2\n\n\n",
			want: txnRequest{
				cmps: []clientv3.Cmp{
					clientv3.Compare(clientv3.Value("k"), "=", "v"),
					clientv3.Compare(clientv3.Version("k"), "=", 1),
				},
				success: []clientv3.Op{clientv3.OpGet("k"), clientv3.OpDelete("k2")},
			},
		},
		{
			name:  "no compares",
			input: "\nput a b\n\n\n",
			want:  txnRequest{success: []clientv3.Op{put("a", "b")}},
		},
		{
			name:  "only failure ops",
			input: "create(\"k\") = \"0\"\n\n\nput k v\n\n",
			want: txnRequest{
				cmps:    []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision("k"), "=", 0)},
				failure: []clientv3.Op{put("k", "v")},
			},
		},
		{
			name:  "input ends without the last blank line",
			input: "mod(\"k\") > \"0\"\n\nput k v\n\nput k w",
			want: txnRequest{
				cmps:    []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision("k"), ">", 0)},
				success: []clientv3.Op{put("k", "v")},
				failure: []clientv3.Op{put("k", "w")},
			},
		},
		{
			name:  "CRLF line ends and space-only separators",
			input: "mod(\"k\") > \"0\"\r\n  \r\nput k v\r\n\t\r\n",
			want: txnRequest{
				cmps:    []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision("k"), ">", 0)},
				success: []clientv3.Op{put("k", "v")},
			},
		},
		{
			name:  "empty input",
			input: "",
			want:  txnRequest{},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := readTxn(strings.NewReader(tt.input), nil)
			if err != nil {
				t.Fatalf("readTxn: %v", err)
			}
			if len(got.cmps) != len(tt.want.cmps) {
				t.Fatalf("compares = %v, want %v", got.cmps, tt.want.cmps)
			}
			for i := range got.cmps {
				if !cmpEqual(got.cmps[i], tt.want.cmps[i]) {
					t.Errorf("compare %d = %v, want %v", i, got.cmps[i].GetCompare(), tt.want.cmps[i].GetCompare())
				}
			}
			if !reflect.DeepEqual(got.success, tt.want.success) {
				t.Errorf("success = %+v, want %+v", got.success, tt.want.success)
			}
			if !reflect.DeepEqual(got.failure, tt.want.failure) {
				t.Errorf("failure = %+v, want %+v", got.failure, tt.want.failure)
			}
		})
	}
}

func TestReadTxnErrors(t *testing.T) {
	tests := []struct {
		name    string
		input   string
		wantErr string
	}{
		{"bad compare", "mod(\"k\") > \"0\"\nfoo(\"k\") = \"1\"\n\n", "txn: line 2: malformed comparison"},
		{"op in compares", "put k v\n\n", "txn: line 1: malformed comparison"},
		{"bad success op", "\nput k v\nput k\n\n", "txn: line 3: put command needs"},
		{"bad failure op", "\n\nget\n", "txn: line 3: get command needs"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := readTxn(strings.NewReader(tt.input), nil)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("readTxn error = %v, want one containing %q", err, tt.wantErr)
			}
			if code := exitCode(err); code != exitInvalidInput {
				t.Errorf("exit code = %d, want %d", code, exitInvalidInput)
			}
		})
	}
}

// TestReadTxnPrompts checks that interactive mode prompts before each
// section, in order, with etcdctl's titles.
func TestReadTxnPrompts(t *testing.T) {
	var prompts []string
	_, err := readTxn(strings.NewReader("mod(\"k\") > \"0\"\n\nput k v\n\nput k w\n\n"), func(s string) {
		prompts = append(prompts, s)
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"compares:", "success requests (get, put, del):", "failure requests (get, put, del):"}
	if !reflect.DeepEqual(prompts, want) {
		t.Errorf("prompts = %q, want %q", prompts, want)
	}
}

type failingReader struct{}

func (failingReader) Read([]byte) (int, error) { return 0, errors.New("disk on fire") }

func TestReadTxnReadError(t *testing.T) {
	_, err := readTxn(failingReader{}, nil)
	if err == nil || !strings.Contains(err.Error(), "disk on fire") {
		t.Fatalf("readTxn error = %v, want the read error", err)
	}
}
