package main

import (
	"context"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
)

func demoNode(ready corev1.ConditionStatus) *corev1.Node {
	return &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: nodeName},
		Status:     corev1.NodeStatus{Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: ready}}},
	}
}

func demoPod(uid string, restarts int32) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "hello-eve-" + uid, Namespace: "default", UID: types.UID(uid), Labels: map[string]string{"app": "hello-eve"}},
		Spec:       corev1.PodSpec{NodeName: nodeName},
		Status: corev1.PodStatus{Phase: corev1.PodRunning,
			ContainerStatuses: []corev1.ContainerStatus{{Name: "hello", RestartCount: restarts}}},
	}
}

// The check after a run next to the demo must fail on each way the demo
// can be hurt, and pass only when nothing changed.
func TestCheckSame(t *testing.T) {
	before := demoPod("a", 0)
	for name, tc := range map[string]struct {
		node *corev1.Node
		pod  *corev1.Pod
		want string
	}{
		"unharmed":       {demoNode(corev1.ConditionTrue), demoPod("a", 0), ""},
		"node not ready": {demoNode(corev1.ConditionUnknown), demoPod("a", 0), "not Ready"},
		"pod replaced":   {demoNode(corev1.ConditionTrue), demoPod("b", 0), "replaced"},
		"pod restarted":  {demoNode(corev1.ConditionTrue), demoPod("a", 1), "restarted"},
	} {
		cs := fake.NewClientset(tc.node, tc.pod)
		err := checkSame(context.Background(), cs, before)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v", name, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: got %v, want an error saying %q", name, err, tc.want)
		}
	}
}
