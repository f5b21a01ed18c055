package cri

import (
	"context"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
	corev1 "k8s.io/api/core/v1"

	"github.com/lf-edge/evelet/internal/kubeerr"
)

// lastKnownPods answers from the last pod read for a name when the
// apiserver cannot be reached, so that a pod whose sandbox dies during a
// network outage is recreated as on any node, instead of waiting for the
// apiserver: the kubelet runs the pods it knows without it.
//
// That is safe for the spec-level rules because everything they judge
// (probes, lifecycle handlers, volumes) is immutable in a pod; specPod
// still checks that the pod is the one the sandbox is for (same UID). An
// answer from the apiserver, including "no such pod" or "forbidden", is
// always used as it is.
type lastKnownPods struct {
	src PodSource
	log *logrus.Entry

	mu   sync.Mutex
	pods map[string]knownPod // namespace/name
}

type knownPod struct {
	pod  *corev1.Pod
	read time.Time
}

// lastKnownMax bounds the memory: far more than the pods one node runs
// (110 by default); the oldest reads go first.
const lastKnownMax = 1024

func newLastKnownPods(src PodSource, log *logrus.Entry) *lastKnownPods {
	return &lastKnownPods{src: src, log: log, pods: map[string]knownPod{}}
}

func (l *lastKnownPods) Pod(ctx context.Context, namespace, name string) (*corev1.Pod, error) {
	key := namespace + "/" + name
	pod, err := l.src.Pod(ctx, namespace, name)
	l.mu.Lock()
	defer l.mu.Unlock()
	if err == nil {
		l.remember(key, pod)
		return pod, nil
	}
	if !kubeerr.Unreachable(err) {
		delete(l.pods, key)
		return nil, err
	}
	k, ok := l.pods[key]
	if !ok {
		return nil, err
	}
	l.log.WithError(err).WithFields(logrus.Fields{"pod": key, "uid": k.pod.UID, "readAt": k.read.Format(time.RFC3339)}).
		Warn("apiserver unreachable: checking the pod as it was last read")
	return k.pod, nil
}

func (l *lastKnownPods) remember(key string, pod *corev1.Pod) {
	if _, ok := l.pods[key]; !ok && len(l.pods) >= lastKnownMax {
		var oldest string
		for k, v := range l.pods {
			if oldest == "" || v.read.Before(l.pods[oldest].read) {
				oldest = k
			}
		}
		delete(l.pods, oldest)
	}
	l.pods[key] = knownPod{pod: pod, read: time.Now()}
}
