package controlplane

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	bootstrapapi "k8s.io/cluster-bootstrap/token/api"
	bootstraputil "k8s.io/cluster-bootstrap/token/util"
)

// Names kubeadm init gives the objects that let nodes join (constants of
// cmd/kubeadm/app/constants and the bootstraptoken phases, v1.35).
const (
	// NodeBootstrapTokenGroup is the extra group of kubeadm's node join
	// tokens; the RBAC bindings below are for it.
	NodeBootstrapTokenGroup = "system:bootstrappers:kubeadm:default-node-token"

	clusterInfoRole              = "kubeadm:bootstrap-signer-clusterinfo"
	kubeletBootstrapBinding      = "kubeadm:kubelet-bootstrap"
	nodeAutoApproveBinding       = "kubeadm:node-autoapprove-bootstrap"
	nodeAutoApproveRotateBinding = "kubeadm:node-autoapprove-certificate-rotation"
	getNodesRole                 = "kubeadm:get-nodes"
	nodeBootstrapperRole         = "system:node-bootstrapper"
	nodeClientCSRRole            = "system:certificates.k8s.io:certificatesigningrequests:nodeclient"
	selfNodeClientCSRRole        = "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient"
	nodesGroup                   = "system:nodes"
)

// createClusterObjects creates what `kubeadm init` creates for joining
// nodes: the cluster-info ConfigMap and the anonymous read access to it,
// and the bindings for TLS bootstrapping and CSR auto-approval. Objects
// that exist are updated. Errors are retried until the timeout: right
// after /readyz, kube-public may not exist yet.
func (c *ControlPlane) createClusterObjects(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	steps := []struct {
		what string
		do   func(context.Context) error
	}{
		{"kube-public/cluster-info", c.applyClusterInfo},
		{"cluster-info RBAC", c.applyClusterInfoRBAC},
		{"node bootstrap RBAC", c.applyNodeBootstrapRBAC},
	}
	for _, s := range steps {
		var err error
		for {
			if err = s.do(ctx); err == nil {
				break
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("controlplane: creating %s: %w", s.what, err)
			case <-time.After(200 * time.Millisecond):
			}
		}
	}
	return nil
}

func (c *ControlPlane) applyClusterInfo(ctx context.Context) error {
	kc, err := clusterInfoKubeconfig(c.advertiseURL, c.ca.certPEM)
	if err != nil {
		return err
	}
	cms := c.client.CoreV1().ConfigMaps(metav1.NamespacePublic)
	cm, err := cms.Get(ctx, bootstrapapi.ConfigMapClusterInfo, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		_, err = cms.Create(ctx, &corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Name: bootstrapapi.ConfigMapClusterInfo, Namespace: metav1.NamespacePublic},
			Data:       map[string]string{bootstrapapi.KubeConfigKey: string(kc)},
		}, metav1.CreateOptions{})
		return err
	}
	if err != nil {
		return err
	}
	if cm.Data[bootstrapapi.KubeConfigKey] == string(kc) {
		return nil
	}
	// Keep the signer's jws-kubeconfig-* keys; it re-signs the new content.
	if cm.Data == nil {
		cm.Data = map[string]string{}
	}
	cm.Data[bootstrapapi.KubeConfigKey] = string(kc)
	_, err = cms.Update(ctx, cm, metav1.UpdateOptions{})
	return err
}

func (c *ControlPlane) applyClusterInfoRBAC(ctx context.Context) error {
	if err := c.applyRole(ctx, &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Name: clusterInfoRole, Namespace: metav1.NamespacePublic},
		Rules: []rbacv1.PolicyRule{{
			Verbs:         []string{"get"},
			APIGroups:     []string{""},
			Resources:     []string{"configmaps"},
			ResourceNames: []string{bootstrapapi.ConfigMapClusterInfo},
		}},
	}); err != nil {
		return err
	}
	return c.applyRoleBinding(ctx, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: clusterInfoRole, Namespace: metav1.NamespacePublic},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: clusterInfoRole},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.UserKind, Name: "system:anonymous"}},
	})
}

func (c *ControlPlane) applyNodeBootstrapRBAC(ctx context.Context) error {
	if err := c.applyClusterRole(ctx, &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: getNodesRole},
		Rules: []rbacv1.PolicyRule{{
			Verbs:     []string{"get"},
			APIGroups: []string{""},
			Resources: []string{"nodes"},
		}},
	}); err != nil {
		return err
	}
	for _, b := range []struct{ name, role, group string }{
		// Bootstrap tokens may post CSRs...
		{kubeletBootstrapBinding, nodeBootstrapperRole, NodeBootstrapTokenGroup},
		// ...which the csrapproving controller approves...
		{nodeAutoApproveBinding, nodeClientCSRRole, NodeBootstrapTokenGroup},
		// ...as it approves the nodes' renewals of their client certificates.
		{nodeAutoApproveRotateBinding, selfNodeClientCSRRole, nodesGroup},
		// kubeadm join checks for a node of the same name with the token.
		{getNodesRole, getNodesRole, NodeBootstrapTokenGroup},
	} {
		if err := c.applyClusterRoleBinding(ctx, &rbacv1.ClusterRoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: b.name},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: b.role},
			Subjects:   []rbacv1.Subject{{Kind: rbacv1.GroupKind, Name: b.group}},
		}); err != nil {
			return err
		}
	}
	return nil
}

// The apply helpers create an object, or overwrite the existing one's
// rules/subjects (a reused etcd may hold an older version).

func (c *ControlPlane) applyRole(ctx context.Context, r *rbacv1.Role) error {
	api := c.client.RbacV1().Roles(r.Namespace)
	_, err := api.Create(ctx, r, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		var old *rbacv1.Role
		if old, err = api.Get(ctx, r.Name, metav1.GetOptions{}); err == nil {
			old.Rules = r.Rules
			_, err = api.Update(ctx, old, metav1.UpdateOptions{})
		}
	}
	return err
}

func (c *ControlPlane) applyRoleBinding(ctx context.Context, b *rbacv1.RoleBinding) error {
	api := c.client.RbacV1().RoleBindings(b.Namespace)
	_, err := api.Create(ctx, b, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		var old *rbacv1.RoleBinding
		if old, err = api.Get(ctx, b.Name, metav1.GetOptions{}); err == nil {
			old.Subjects = b.Subjects // roleRef is immutable, and ours never changes
			_, err = api.Update(ctx, old, metav1.UpdateOptions{})
		}
	}
	return err
}

func (c *ControlPlane) applyClusterRole(ctx context.Context, r *rbacv1.ClusterRole) error {
	api := c.client.RbacV1().ClusterRoles()
	_, err := api.Create(ctx, r, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		var old *rbacv1.ClusterRole
		if old, err = api.Get(ctx, r.Name, metav1.GetOptions{}); err == nil {
			old.Rules = r.Rules
			_, err = api.Update(ctx, old, metav1.UpdateOptions{})
		}
	}
	return err
}

func (c *ControlPlane) applyClusterRoleBinding(ctx context.Context, b *rbacv1.ClusterRoleBinding) error {
	api := c.client.RbacV1().ClusterRoleBindings()
	_, err := api.Create(ctx, b, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		var old *rbacv1.ClusterRoleBinding
		if old, err = api.Get(ctx, b.Name, metav1.GetOptions{}); err == nil {
			old.Subjects = b.Subjects
			_, err = api.Update(ctx, old, metav1.UpdateOptions{})
		}
	}
	return err
}

// waitDefaultServiceAccount waits for what every pod of the "default"
// namespace needs from the controller-manager: the "default"
// ServiceAccount and the kube-root-ca.crt ConfigMap its token volume
// projects.
func (c *ControlPlane) waitDefaultServiceAccount(ctx context.Context) error {
	return c.poll(ctx, c.timeout, "default ServiceAccount and kube-root-ca.crt in namespace default", func(ctx context.Context) error {
		if _, err := c.client.CoreV1().ServiceAccounts(metav1.NamespaceDefault).Get(ctx, "default", metav1.GetOptions{}); err != nil {
			return err
		}
		_, err := c.client.CoreV1().ConfigMaps(metav1.NamespaceDefault).Get(ctx, "kube-root-ca.crt", metav1.GetOptions{})
		return err
	})
}

// poll runs f every 100 ms until it succeeds, or fails with its last error
// after timeout (or when ctx ends).
func (c *ControlPlane) poll(ctx context.Context, timeout time.Duration, what string, f func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last error
	for {
		pctx, pcancel := context.WithTimeout(ctx, 5*time.Second)
		err := f(pctx)
		pcancel()
		if err == nil {
			return nil
		}
		if ctx.Err() == nil || last == nil {
			last = err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("controlplane: waiting for %s: %w (last: %v)", what, ctx.Err(), last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// CreateBootstrapToken creates a bootstrap token the way `kubeadm token
// create` does: the Secret kube-system/bootstrap-token-<id> of type
// bootstrap.kubernetes.io/token, usable for authentication and signing,
// in the group system:bootstrappers:kubeadm:default-node-token, expiring
// after ttl (never, for ttl <= 0). It then waits until the
// controller-manager's bootstrapsigner has signed kube-public/cluster-info
// with it (jws-kubeconfig-<id>), which token discovery needs. If that wait
// fails, the token is returned with the error (its Secret exists).
func (c *ControlPlane) CreateBootstrapToken(ctx context.Context, ttl time.Duration) (string, error) {
	token, err := bootstraputil.GenerateBootstrapToken()
	if err != nil {
		return "", fmt.Errorf("controlplane: %w", err)
	}
	id, secret, _ := strings.Cut(token, ".")
	data := map[string][]byte{
		bootstrapapi.BootstrapTokenIDKey:               []byte(id),
		bootstrapapi.BootstrapTokenSecretKey:           []byte(secret),
		bootstrapapi.BootstrapTokenUsageAuthentication: []byte("true"),
		bootstrapapi.BootstrapTokenUsageSigningKey:     []byte("true"),
		bootstrapapi.BootstrapTokenExtraGroupsKey:      []byte(NodeBootstrapTokenGroup),
	}
	if ttl > 0 {
		data[bootstrapapi.BootstrapTokenExpirationKey] = []byte(time.Now().Add(ttl).UTC().Format(time.RFC3339))
	}
	_, err = c.client.CoreV1().Secrets(metav1.NamespaceSystem).Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: bootstraputil.BootstrapTokenSecretName(id), Namespace: metav1.NamespaceSystem},
		Type:       bootstrapapi.SecretTypeBootstrapToken,
		Data:       data,
	}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("controlplane: creating bootstrap token %s: %w", id, err)
	}
	if err := c.waitClusterInfoSignature(ctx, id, true); err != nil {
		return token, err
	}
	return token, nil
}

// DeleteBootstrapToken deletes the token with this id (a whole token
// "<id>.<secret>" is accepted too) and waits until its signature is gone
// from kube-public/cluster-info. Deleting an unknown token is not an error.
func (c *ControlPlane) DeleteBootstrapToken(ctx context.Context, id string) error {
	id, _, _ = strings.Cut(id, ".")
	if !bootstraputil.IsValidBootstrapTokenID(id) {
		return fmt.Errorf("controlplane: %q is not a bootstrap token id", id)
	}
	err := c.client.CoreV1().Secrets(metav1.NamespaceSystem).Delete(ctx, bootstraputil.BootstrapTokenSecretName(id), metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("controlplane: deleting bootstrap token %s: %w", id, err)
	}
	return c.waitClusterInfoSignature(ctx, id, false)
}

// waitClusterInfoSignature waits until cluster-info has (present) or lacks
// (!present) the JWS signature for token id, bounded by ctx and the start
// timeout.
func (c *ControlPlane) waitClusterInfoSignature(ctx context.Context, id string, present bool) error {
	key := bootstrapapi.JWSSignatureKeyPrefix + id
	what := fmt.Sprintf("%s in %s/%s (is the controller-manager's bootstrapsigner running?)", key, metav1.NamespacePublic, bootstrapapi.ConfigMapClusterInfo)
	if !present {
		what = key + " to leave " + metav1.NamespacePublic + "/" + bootstrapapi.ConfigMapClusterInfo
	}
	return c.poll(ctx, c.timeout, what, func(ctx context.Context) error {
		cm, err := c.client.CoreV1().ConfigMaps(metav1.NamespacePublic).Get(ctx, bootstrapapi.ConfigMapClusterInfo, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if _, ok := cm.Data[key]; ok != present {
			return errors.New("not yet")
		}
		return nil
	})
}

// K10Token is token in the k3s-style secure form evelet accepts from the
// EVE controller: "K10" + sha256 hex of the CA bundle exactly as
// kube-public/cluster-info carries it + "::" + the bootstrap token.
func (c *ControlPlane) K10Token(ctx context.Context, token string) (string, error) {
	cm, err := c.Client().CoreV1().ConfigMaps(metav1.NamespacePublic).Get(ctx, "cluster-info", metav1.GetOptions{})
	if err != nil {
		return "", err
	}
	kc, err := clientcmd.Load([]byte(cm.Data["kubeconfig"]))
	if err != nil {
		return "", fmt.Errorf("cluster-info kubeconfig: %w", err)
	}
	for _, cl := range kc.Clusters {
		sum := sha256.Sum256(cl.CertificateAuthorityData)
		return "K10" + hex.EncodeToString(sum[:]) + "::" + token, nil
	}
	return "", errors.New("cluster-info has no cluster")
}
