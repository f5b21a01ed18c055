package e2e

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/lf-edge/evelet/agent"
	"github.com/lf-edge/evelet/images"
	"github.com/lf-edge/evelet/policy"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

type guardrailCase struct {
	name string
	rule string
	knob string // config item key
	val  string
	mut  func(*corev1.Pod)
}

func guardrailCases() []guardrailCase {
	hostPath := func(path string, typ corev1.HostPathType) func(*corev1.Pod) {
		return func(p *corev1.Pod) {
			p.Spec.Volumes = []corev1.Volume{{Name: "h", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: path, Type: &typ}}}}
			p.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "h", MountPath: "/host"}}
		}
	}
	return []guardrailCase{
		{"privileged", policy.RulePrivileged, policy.KeyAllowPrivileged, "true", func(p *corev1.Pod) {
			p.Spec.Containers[0].SecurityContext = &corev1.SecurityContext{Privileged: ptr.To(true)}
		}},
		{"host-pid", policy.RuleHostPID, policy.KeyAllowHostPID, "true", func(p *corev1.Pod) { p.Spec.HostPID = true }},
		// "/" and the device's own directories can never be allowed
		// (TestVolumeEscapes); a plain host directory can.
		{"hostpath-srv", policy.RuleHostPath, policy.KeyAllowedHostPaths, "/srv", hostPath("/srv", corev1.HostPathDirectory)},
		{"hostpath-mnt", policy.RuleHostPath, policy.KeyAllowedHostPaths, "/mnt", hostPath("/mnt", corev1.HostPathDirectory)},
		{"cap-sys-admin", policy.RuleCapabilities, policy.KeyAllowedCapabilities, "SYS_ADMIN", func(p *corev1.Pod) {
			p.Spec.Containers[0].SecurityContext = &corev1.SecurityContext{Capabilities: &corev1.Capabilities{Add: []corev1.Capability{"SYS_ADMIN"}}}
		}},
		{"unsafe-sysctl", policy.RuleSysctls, policy.KeyAllowedUnsafeSysctls, "kernel.msgmax", func(p *corev1.Pod) {
			p.Spec.SecurityContext = &corev1.PodSecurityContext{Sysctls: []corev1.Sysctl{{Name: "kernel.msgmax", Value: "65536"}}}
		}},
		// A raw device node reaches a pod as a hostPath of type CharDevice
		// (device-plugin devices are checked at the CRI level in
		// tests/criconformance).
		{"raw-device", policy.RuleHostPath, policy.KeyAllowedHostPaths, "/dev/kmsg", hostPath("/dev/kmsg", corev1.HostPathCharDev)},
	}
}

func guardedPod(name, node string, mut func(*corev1.Pod)) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
		Spec: corev1.PodSpec{
			NodeSelector:                  map[string]string{corev1.LabelHostname: node},
			TerminationGracePeriodSeconds: ptr.To[int64](1),
			Containers: []corev1.Container{{
				Name: "main", Image: images.BusyboxRef, ImagePullPolicy: corev1.PullNever,
				Command: []string{"sleep", "3600"},
			}},
		},
	}
	mut(p)
	return p
}

// TestGuardrails: each forbidden pod spec is refused with the named rule in
// the pod's events (what `kubectl describe pod` shows), and the same spec
// runs once the device owner enables the knob through the EVE side
// (EdgeDevConfig config items).
func TestGuardrails(t *testing.T) {
	needEnv(t)
	ctx := testCtx(t, 15*time.Minute)
	cs := env.cp.Client()
	d, sim := newSimDevice(t, "edge-guarded")
	node := "edge-guarded"
	deleteNodeAtEnd(t, node)
	good := simCluster(t, env.cp, "prod", "11111111-2222-4333-8444-555555555555")
	if err := sim.SetCluster(good); err != nil {
		t.Fatal(err)
	}
	d.start()
	waitNodeReady(t, node, 3*time.Minute)
	if _, err := os.Stat("/config"); err == nil {
		t.Log("/config exists on this host; the hostpath-config case does not create it")
	} else {
		t.Cleanup(func() { os.Remove("/config") })
	}
	cases := guardrailCases()
	deletePods := func() {
		for _, c := range cases {
			cs.CoreV1().Pods("default").Delete(ctx, "g-"+c.name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)})
		}
		waitFor(t, 2*time.Minute, "guardrail pods deleted", func() (bool, error) {
			for _, c := range cases {
				if _, err := cs.CoreV1().Pods("default").Get(ctx, "g-"+c.name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
					return false, fmt.Errorf("g-%s still there: %v", c.name, err)
				}
			}
			return true, nil
		})
	}
	t.Cleanup(deletePods)

	for _, c := range cases {
		if _, err := cs.CoreV1().Pods("default").Create(ctx, guardedPod("g-"+c.name, node, c.mut), metav1.CreateOptions{}); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
	}
	for _, c := range cases {
		want := fmt.Sprintf("evelet guardrail %q", c.rule)
		waitFor(t, 2*time.Minute, c.name+" refused in pod events", func() (bool, error) {
			ev, err := cs.CoreV1().Events("default").List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=g-" + c.name})
			if err != nil {
				return false, err
			}
			for _, e := range ev.Items {
				if strings.Contains(e.Message, want) && strings.Contains(e.Message, c.knob) {
					return true, nil
				}
			}
			return false, fmt.Errorf("%d events, none with %s and %s", len(ev.Items), want, c.knob)
		})
		out, err := env.cp.Kubectl(ctx, "describe", "pod", "-n", "default", "g-"+c.name)
		if err != nil || !strings.Contains(out, want) {
			t.Errorf("%s: kubectl describe pod lacks %s: %v\n%s", c.name, want, err, tail(out, 15))
		}
		p, _ := cs.CoreV1().Pods("default").Get(ctx, "g-"+c.name, metav1.GetOptions{})
		if p.Status.Phase == corev1.PodRunning {
			t.Errorf("%s: pod is Running despite the guardrail", c.name)
		}
	}
	deletePods()

	// The refusals are counted per rule on the agent's metrics endpoint.
	metrics := scrapeAgentMetrics(t)
	for _, c := range cases {
		if !strings.Contains(metrics, fmt.Sprintf(`evelet_cri_policy_rejections_total{rule=%q}`, c.rule)) {
			t.Errorf("metrics lack rejections for %s", c.rule)
		}
	}
	if !strings.Contains(metrics, `evelet_cri_requests_total{`) || !strings.Contains(metrics, `evelet_cri_request_duration_seconds_bucket{`) {
		t.Errorf("metrics lack CRI call counts or latency histograms")
	}

	// The owner enables every knob through the EVE controller's config.
	items := map[string]string{"evelet.apiserver-url": env.cp.URL()}
	for _, c := range cases {
		if prev := items[c.knob]; prev != "" {
			items[c.knob] = prev + "," + c.val
		} else {
			items[c.knob] = c.val
		}
	}
	if err := sim.SetConfigItems(items); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "agent applied the owner's config items", func() (bool, error) {
		return strings.Contains(d.log(), "config items applied") && strings.Contains(d.log(), "allow-privileged"), nil
	})
	for _, c := range cases {
		if _, err := cs.CoreV1().Pods("default").Create(ctx, guardedPod("g-"+c.name, node, c.mut), metav1.CreateOptions{}); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
	}
	for _, c := range cases {
		waitFor(t, 2*time.Minute, c.name+" Running after the knob", func() (bool, error) {
			p, err := cs.CoreV1().Pods("default").Get(ctx, "g-"+c.name, metav1.GetOptions{})
			if err != nil {
				return false, err
			}
			return p.Status.Phase == corev1.PodRunning, fmt.Errorf("phase %s %v", p.Status.Phase, p.Status.ContainerStatuses)
		})
	}
	if st, _ := d.status(); st.Phase != agent.PhaseRunning {
		t.Errorf("phase %s", st.Phase)
	}
}

// scrapeAgentMetrics reads the agent's Prometheus endpoint (default address).
func scrapeAgentMetrics(t *testing.T) string {
	t.Helper()
	resp, err := http.Get("http://127.0.0.1:10260/metrics")
	if err != nil {
		t.Fatalf("metrics endpoint: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("metrics endpoint: %d %v", resp.StatusCode, err)
	}
	return string(b)
}
