package kubeapiserver

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

func TestKubeAPIServerOnPlinth(t *testing.T) {
	plinthBin, apiserverBin := os.Getenv("PLINTH_BIN"), os.Getenv("KUBE_APISERVER_BIN")
	if plinthBin == "" || apiserverBin == "" {
		t.Skip("PLINTH_BIN and KUBE_APISERVER_BIN are unset: run make test-kube-apiserver")
	}
	dir := t.TempDir()
	ports := freePorts(t, 3)
	clientURL := fmt.Sprintf("http://127.0.0.1:%d", ports[0])
	peerURL := fmt.Sprintf("http://127.0.0.1:%d", ports[1])
	start(t, dir, "plinth", plinthBin,
		"--name", "m0", "--data-dir", filepath.Join(dir, "plinth.data"),
		"--listen-client-urls", clientURL, "--advertise-client-urls", clientURL,
		"--listen-peer-urls", peerURL, "--initial-advertise-peer-urls", peerURL,
		"--initial-cluster", "m0="+peerURL, "--log-level", "warn")

	keyFile := writeServiceAccountKey(t, dir)
	// kube-apiserver turns anonymous requests off under AlwaysAllow: the
	// client authenticates with a static token.
	const token = "plinth-test-token"
	tokenFile := filepath.Join(dir, "tokens.csv")
	if err := os.WriteFile(tokenFile, []byte(token+",admin,admin,system:masters\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	apiserverExited := start(t, dir, "kube-apiserver", apiserverBin,
		"--etcd-servers", clientURL,
		"--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1",
		"--secure-port", fmt.Sprint(ports[2]), "--cert-dir", filepath.Join(dir, "certs"),
		"--authorization-mode", "AlwaysAllow", "--token-auth-file", tokenFile,
		"--service-account-issuer", "https://kubernetes.default.svc",
		"--service-account-key-file", keyFile, "--service-account-signing-key-file", keyFile,
		"--service-cluster-ip-range", "10.0.0.0/24",
		// The kubernetes service's endpoint may not be a loopback address:
		// no reconciler keeps one.
		"--endpoint-reconciler-type", "none")

	cfg := &rest.Config{Host: fmt.Sprintf("https://127.0.0.1:%d", ports[2]), BearerToken: token, TLSClientConfig: rest.TLSClientConfig{Insecure: true}}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	waitReady(ctx, t, client, apiserverExited)

	ns := "default"
	cms := client.CoreV1().ConfigMaps(ns)
	initial, err := cms.List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	w, err := cms.Watch(ctx, metav1.ListOptions{ResourceVersion: initial.ResourceVersion})
	if err != nil {
		t.Fatalf("Watch: %v", err)
	}
	defer w.Stop()

	created, err := cms.Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "on-plinth"}, Data: map[string]string{"k": "v1"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	created.Data["k"] = "v2"
	updated, err := cms.Update(ctx, created, metav1.UpdateOptions{})
	if err != nil {
		t.Fatalf("Update: %v", err)
	}
	// An update from the old resource version conflicts, as on etcd.
	created.Data["k"] = "stale"
	if _, err := cms.Update(ctx, created, metav1.UpdateOptions{}); !apierrors.IsConflict(err) {
		t.Fatalf("Update from a stale resource version: %v, want a conflict", err)
	}
	// A consistent list (no resource version) is served from the watch
	// cache after a progress request to plinth.
	list, err := cms.List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	if !hasConfigMap(list.Items, "on-plinth", "v2") {
		t.Fatalf("List after the update: %v", list.Items)
	}
	if err := cms.Delete(ctx, "on-plinth", metav1.DeleteOptions{}); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if _, err := cms.Get(ctx, "on-plinth", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("Get after Delete: %v, want not found", err)
	}

	want := []watch.EventType{watch.Added, watch.Modified, watch.Deleted}
	for i, typ := range want {
		select {
		case ev, ok := <-w.ResultChan():
			if !ok {
				t.Fatalf("watch closed after %d events", i)
			}
			cm, _ := ev.Object.(*corev1.ConfigMap)
			if ev.Type != typ || cm == nil || cm.Name != "on-plinth" {
				t.Fatalf("watch event %d: %s %T %v, want %s of on-plinth", i, ev.Type, ev.Object, ev.Object, typ)
			}
			if typ == watch.Modified && cm.ResourceVersion != updated.ResourceVersion {
				t.Errorf("modified event at %s, the update answered %s", cm.ResourceVersion, updated.ResourceVersion)
			}
		case <-ctx.Done():
			t.Fatalf("watch: no event %d (%s)", i, typ)
		}
	}
}

func hasConfigMap(items []corev1.ConfigMap, name, value string) bool {
	for _, cm := range items {
		if cm.Name == name && cm.Data["k"] == value {
			return true
		}
	}
	return false
}

// waitReady polls /readyz until the API server answers ok.
func waitReady(ctx context.Context, t *testing.T, client *kubernetes.Clientset, exited <-chan struct{}) {
	t.Helper()
	var last string
	for ctx.Err() == nil {
		select {
		case <-exited:
			t.Fatal("kube-apiserver exited")
		default:
		}
		body, err := client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		if err == nil && strings.TrimSpace(string(body)) == "ok" {
			return
		}
		last = fmt.Sprintf("%v %s", err, body)
		time.Sleep(500 * time.Millisecond)
	}
	t.Fatalf("kube-apiserver not ready: %s", last)
}

// start runs bin with its output in dir/name.log, stopped by pid when t
// ends (SIGTERM, then SIGKILL after 10s); the log's end is shown if t failed.
// The channel returned is closed when the process exits.
func start(t *testing.T, dir, name, bin string, args ...string) <-chan struct{} {
	t.Helper()
	logPath := filepath.Join(dir, name+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		logf.Close()
		if t.Failed() {
			data, _ := os.ReadFile(logPath)
			lines := strings.Split(string(data), "\n")
			if len(lines) > 40 {
				lines = lines[len(lines)-40:]
			}
			t.Logf("last lines of %s:\n%s", logPath, strings.Join(lines, "\n"))
		}
	})
	return exited
}

// writeServiceAccountKey writes the RSA key kube-apiserver signs service
// account tokens with (a flag it cannot start without).
func writeServiceAccountKey(t *testing.T, dir string) string {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "sa.key")
	data := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func freePorts(t *testing.T, n int) []int {
	t.Helper()
	var ports []int
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports
}
