package main

import (
	"bytes"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

// Outputs of the cluster commands (member, alarm, endpoint health) in each
// format, as etcdctl v3.7.3 prints them.

func testMembers() *pb.MemberListResponse {
	return &pb.MemberListResponse{Header: &pb.ResponseHeader{ClusterId: 0x48276a8f75b6a87, MemberId: 0x2e1259d415f2a040, RaftTerm: 2}, Members: []*pb.Member{
		{ID: 0x2e1259d415f2a040, Name: "a", PeerURLs: []string{"http://10.0.0.1:2380"}, ClientURLs: []string{"http://10.0.0.1:2379", "http://127.0.0.1:2379"}},
		{ID: 0x91bc3c398fb3c146, PeerURLs: []string{"http://10.0.0.2:2380"}, IsLearner: true}, // added, not started
	}}
}

func testHealth() []endpointHealth {
	return []endpointHealth{
		{Endpoint: "127.0.0.1:2379", Health: true, Took: "1.5ms"},
		{Endpoint: "127.0.0.1:22379", Took: "2s", Error: "context deadline exceeded"},
	}
}

func TestClusterSimplePrinter(t *testing.T) {
	nospace := &pb.AlarmMember{MemberID: 0x2e1259d415f2a040, Alarm: pb.AlarmType_NOSPACE}
	add := &pb.MemberAddResponse{
		Header: testHeader,
		Member: &pb.Member{ID: 0x91bc3c398fb3c146, PeerURLs: []string{"http://10.0.0.2:2380"}, IsLearner: true},
		Members: []*pb.Member{
			{ID: 0x2e1259d415f2a040, Name: "a", PeerURLs: []string{"http://10.0.0.1:2380"}},
			{ID: 0x91bc3c398fb3c146, PeerURLs: []string{"http://10.0.0.2:2380"}, IsLearner: true},
		},
	}
	for _, tt := range []struct {
		name          string
		print         func(p printer) error
		want, wantErr string
	}{
		{"member list", func(p printer) error { return p.memberList(testMembers()) },
			"2e1259d415f2a040, started, a, http://10.0.0.1:2380, http://10.0.0.1:2379,http://127.0.0.1:2379, false\n" +
				"91bc3c398fb3c146, unstarted, , http://10.0.0.2:2380, , true\n", ""},
		{"member add", func(p printer) error {
			return p.memberChange(memberChange{resp: add, name: "b", peerURLs: "http://10.0.0.2:2380"})
		}, "Member 91bc3c398fb3c146 added as learner to cluster  48276a8f75b6a87\n\n" +
			"ETCD_NAME=\"b\"\n" +
			"ETCD_INITIAL_CLUSTER=\"a=http://10.0.0.1:2380,b=http://10.0.0.2:2380\"\n" +
			"ETCD_INITIAL_ADVERTISE_PEER_URLS=\"http://10.0.0.2:2380\"\n" +
			"ETCD_INITIAL_CLUSTER_STATE=\"existing\"\n", ""},
		{"member remove", func(p printer) error {
			return p.memberChange(memberChange{resp: &pb.MemberRemoveResponse{Header: testHeader}, id: 0x91bc})
		}, "Member             91bc removed from cluster  48276a8f75b6a87\n", ""},
		{"member update", func(p printer) error {
			return p.memberChange(memberChange{resp: &pb.MemberUpdateResponse{Header: testHeader}, id: 0x91bc3c398fb3c146})
		}, "Member 91bc3c398fb3c146 updated in cluster  48276a8f75b6a87\n", ""},
		{"member promote", func(p printer) error {
			return p.memberChange(memberChange{resp: &pb.MemberPromoteResponse{Header: testHeader}, id: 0x91bc3c398fb3c146})
		}, "Member 91bc3c398fb3c146 promoted in cluster  48276a8f75b6a87\n", ""},
		{"alarm list", func(p printer) error {
			return p.alarm(&pb.AlarmResponse{Header: testHeader, Alarms: []*pb.AlarmMember{nospace}})
		}, nospace.String() + "\n", ""},
		{"no alarm", func(p printer) error { return p.alarm(&pb.AlarmResponse{Header: testHeader}) }, "", ""},
		{"endpoint health", func(p printer) error { return p.health(testHealth()) },
			"127.0.0.1:2379 is healthy: successfully committed proposal: took = 1.5ms\n",
			"127.0.0.1:22379 is unhealthy: failed to commit proposal: context deadline exceeded\n"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			if err := tt.print(&simplePrinter{w: &out, errOut: &errOut}); err != nil {
				t.Fatal(err)
			}
			if out.String() != tt.want || errOut.String() != tt.wantErr {
				t.Errorf("got\n%q, stderr %q\nwant\n%q, stderr %q", out.String(), errOut.String(), tt.want, tt.wantErr)
			}
		})
	}
}

func TestClusterJSONPrinter(t *testing.T) {
	for _, tt := range []struct {
		name  string
		hex   bool
		print func(p printer) error
		want  string
	}{
		{"member list", false, func(p printer) error { return p.memberList(testMembers()) },
			`{"header":{"cluster_id":324952591200643719,"member_id":3319814642761637952,"raft_term":2},"members":[` +
				`{"ID":3319814642761637952,"name":"a","peerURLs":["http://10.0.0.1:2380"],"clientURLs":["http://10.0.0.1:2379","http://127.0.0.1:2379"]},` +
				`{"ID":10501334649042878790,"peerURLs":["http://10.0.0.2:2380"],"isLearner":true}]}` + "\n"},
		{"member list --hex", true, func(p printer) error { return p.memberList(testMembers()) },
			`{"header":{"cluster_id":"48276a8f75b6a87","member_id":"2e1259d415f2a040","raft_term":2},"members":[` +
				`{"ID":"2e1259d415f2a040","name":"a","peerURLs":["http://10.0.0.1:2380"],"clientURLs":["http://10.0.0.1:2379","http://127.0.0.1:2379"]},` +
				`{"ID":"91bc3c398fb3c146","peerURLs":["http://10.0.0.2:2380"],"isLearner":true}]}` + "\n"},
		{"member add --hex", true, func(p printer) error {
			return p.memberChange(memberChange{resp: &pb.MemberAddResponse{Header: testHeader, Member: &pb.Member{ID: 0xb}}})
		}, `{"header":{"cluster_id":"48276a8f75b6a87","member_id":"2e1259d415f2a040","revision":7,"raft_term":2},"member":{"ID":"b"},"members":[]}` + "\n"},
		{"member remove", false, func(p printer) error {
			return p.memberChange(memberChange{resp: &pb.MemberRemoveResponse{Header: &pb.ResponseHeader{RaftTerm: 2}}, id: 0xb})
		}, `{"header":{"raft_term":2}}` + "\n"},
		{"member promote --hex", true, func(p printer) error {
			return p.memberChange(memberChange{resp: &pb.MemberPromoteResponse{Header: &pb.ResponseHeader{RaftTerm: 2}, Members: []*pb.Member{{ID: 0xb}}}, id: 0xb})
		}, `{"header":{"cluster_id":"0","member_id":"0","raft_term":2},"members":[{"ID":"b"}]}` + "\n"},
		{"alarm list", false, func(p printer) error {
			return p.alarm(&pb.AlarmResponse{Header: &pb.ResponseHeader{RaftTerm: 2}, Alarms: []*pb.AlarmMember{{MemberID: 5, Alarm: pb.AlarmType_CORRUPT}}})
		}, `{"header":{"raft_term":2},"alarms":[{"memberID":5,"alarm":2}]}` + "\n"},
		{"endpoint health", false, func(p printer) error { return p.health(testHealth()) },
			`[{"endpoint":"127.0.0.1:2379","health":true,"took":"1.5ms"},{"endpoint":"127.0.0.1:22379","health":false,"took":"2s","error":"context deadline exceeded"}]` + "\n"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			if err := tt.print(&jsonPrinter{w: &buf, hex: tt.hex}); err != nil {
				t.Fatal(err)
			}
			if got := buf.String(); got != tt.want {
				t.Errorf("got\n%s\nwant\n%s", got, tt.want)
			}
		})
	}
}

func TestClusterTablePrinter(t *testing.T) {
	var buf bytes.Buffer
	p := &tablePrinter{w: &buf}
	if err := p.memberList(testMembers()); err != nil {
		t.Fatal(err)
	}
	want := `┌──────────────────┬───────────┬──────┬──────────────────────┬────────────────────────────────────────────┬────────────┐
│        ID        │  STATUS   │ NAME │      PEER ADDRS      │                CLIENT ADDRS                │ IS LEARNER │
├──────────────────┼───────────┼──────┼──────────────────────┼────────────────────────────────────────────┼────────────┤
│ 2e1259d415f2a040 │   started │    a │ http://10.0.0.1:2380 │ http://10.0.0.1:2379,http://127.0.0.1:2379 │      false │
│ 91bc3c398fb3c146 │ unstarted │      │ http://10.0.0.2:2380 │                                            │       true │
└──────────────────┴───────────┴──────┴──────────────────────┴────────────────────────────────────────────┴────────────┘
`
	if got := buf.String(); got != want {
		t.Errorf("member list: got\n%s\nwant\n%s", got, want)
	}
	buf.Reset()
	if err := p.health(testHealth()); err != nil {
		t.Fatal(err)
	}
	want = `┌─────────────────┬────────┬───────┬───────────────────────────┐
│    ENDPOINT     │ HEALTH │ TOOK  │           ERROR           │
├─────────────────┼────────┼───────┼───────────────────────────┤
│  127.0.0.1:2379 │   true │ 1.5ms │                           │
│ 127.0.0.1:22379 │  false │    2s │ context deadline exceeded │
└─────────────────┴────────┴───────┴───────────────────────────┘
`
	if got := buf.String(); got != want {
		t.Errorf("endpoint health: got\n%s\nwant\n%s", got, want)
	}
	for name, err := range map[string]error{
		"alarm":      p.alarm(&pb.AlarmResponse{}),
		"member add": p.memberChange(memberChange{resp: &pb.MemberAddResponse{}}),
	} {
		if exitCode(err) != exitBadFeature || err.Error() != "table not supported as output format" {
			t.Errorf("%s -w table: error %v (exit %d), want etcdctl's with exit %d", name, err, exitCode(err), exitBadFeature)
		}
	}
}

func TestClusterFieldsPrinter(t *testing.T) {
	var buf bytes.Buffer
	p := &fieldsPrinter{w: &buf, hex: true}
	if err := p.memberList(testMembers()); err != nil {
		t.Fatal(err)
	}
	// A header without a revision leaves the line out, as etcdctl does.
	want := `"ClusterID" : 48276a8f75b6a87
"MemberID" : 2e1259d415f2a040
"RaftTerm" : 2
"ID" : 2e1259d415f2a040
"Name" : "a"
"PeerURL" : "http://10.0.0.1:2380"
"ClientURL" : "http://10.0.0.1:2379"
"ClientURL" : "http://127.0.0.1:2379"
"IsLearner" : false

"ID" : 91bc3c398fb3c146
"Name" : ""
"PeerURL" : "http://10.0.0.2:2380"
"IsLearner" : true

`
	if got := buf.String(); got != want {
		t.Errorf("member list --hex: got\n%s\nwant\n%s", got, want)
	}
	buf.Reset()
	p.hex = false
	if err := p.alarm(&pb.AlarmResponse{Header: testHeader, Alarms: []*pb.AlarmMember{{MemberID: 5, Alarm: pb.AlarmType_NOSPACE}}}); err != nil {
		t.Fatal(err)
	}
	want = `"ClusterID" : 324952591200643719
"MemberID" : 3319814642761637952
"Revision" : 7
"RaftTerm" : 2
"MemberID" : 5
"AlarmType" : NOSPACE

`
	if got := buf.String(); got != want {
		t.Errorf("alarm list: got\n%s\nwant\n%s", got, want)
	}
	buf.Reset()
	if err := p.health(testHealth()[1:]); err != nil {
		t.Fatal(err)
	}
	want = "\"Endpoint\" : \"127.0.0.1:22379\"\n\"Health\" : false\n\"Took\" : 2s\n\"Error\" : context deadline exceeded\n\n"
	if got := buf.String(); got != want {
		t.Errorf("endpoint health: got\n%q\nwant\n%q", got, want)
	}
	if err := p.memberChange(memberChange{resp: &pb.MemberAddResponse{}}); exitCode(err) != exitBadFeature || err.Error() != "fields not supported as output format" {
		t.Errorf("member add -w fields: %v", err)
	}
}
