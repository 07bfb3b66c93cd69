package compat

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// sideStep is one request of a step-by-step comparison, sent to each side
// (a server and the clients of it a test needs) by do.
type sideStep[S any] struct {
	name string
	// want is what the reference must answer, so that a step provably
	// reaches its case: "ok", "waiting" (for errStillWaiting), a part of
	// the error's message, or "" for no check.
	want string
	do   func(ctx context.Context, side S) (proto.Message, error)
}

// errStillWaiting stands for a request that has not answered yet, where a
// step expects it to wait.
var errStillWaiting = errors.New("still waiting")

// runSideSteps sends each step to both sides at once and requires the same
// answer from both once normalise has rendered them; it stops at the first
// difference.
func runSideSteps[S any](t *testing.T, ref, tgt S, refName, tgtName string, steps []sideStep[S],
	normalise func(side S, resp proto.Message, err error) (string, []string)) {
	t.Helper()
	for i, st := range steps {
		var (
			wg               sync.WaitGroup
			refResp, tgtResp proto.Message
			refErr, tgtErr   error
		)
		run := func(side S, resp *proto.Message, err *error) {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
			defer cancel()
			*resp, *err = st.do(ctx, side)
		}
		wg.Add(2)
		go run(ref, &refResp, &refErr)
		go run(tgt, &tgtResp, &tgtErr)
		wg.Wait()
		refText, refProblems := normalise(ref, refResp, refErr)
		tgtText, tgtProblems := normalise(tgt, tgtResp, tgtErr)
		if problems := append(refProblems, tgtProblems...); len(problems) > 0 || refText != tgtText {
			t.Fatalf("MISMATCH at step %d (%s)\n%s\ndiff (- %s, + %s):\n%s", i, st.name, strings.Join(problems, "\n"),
				refName, tgtName, lineDiff(refText, tgtText))
		}
		if st.want != "" {
			got := "ok"
			switch {
			case errors.Is(refErr, errStillWaiting):
				got = "waiting"
			case refErr != nil:
				got = status.Convert(refErr).Message()
			}
			if !strings.Contains(got, st.want) {
				t.Fatalf("step %d (%s): the reference answered %q, the step expects %q: fix the step", i, st.name, got, st.want)
			}
		}
	}
}
