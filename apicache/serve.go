package apicache

import (
	"net/http"
	"strconv"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer/streaming"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/apiserver/pkg/endpoints/handlers/negotiation"
	"k8s.io/apiserver/pkg/endpoints/request"
	"k8s.io/client-go/kubernetes/scheme"
	restclientwatch "k8s.io/client-go/rest/watch"
)

// serveCache answers r from c's cache while the apiserver is unreachable:
// gets, lists and watches of cached resources, and tokens issued before.
// Everything else, writes included, gets 503: the kubelet keeps what it
// wanted to write and sends it again once the apiserver answers.
func (p *Proxy) serveCache(w http.ResponseWriter, r *http.Request, c *client, info *request.RequestInfo) {
	switch {
	case isTokenRequest(info):
		p.serveToken(w, r, c, info)
	case isCacheable(info) && info.Subresource == "" && info.Verb == "get":
		obj, ok := c.store.Get(scopeOf(info).GVR, info.Namespace, info.Name)
		if !ok {
			p.miss(w, r, info)
			return
		}
		p.hits.Add(1)
		writeObject(w, r, http.StatusOK, scopeOf(info).GVR.GroupVersion(), obj.DeepCopyObject())
	case isCacheable(info) && info.Subresource == "" && (info.Verb == "list" || info.Verb == "watch") && c.store.ScopeRV(scopeOf(info)) == "":
		// Never listed upstream: the cache does not know this scope, and
		// an empty list would tell the kubelet its pods are gone (it
		// would stop their containers). A 503 keeps its sources not
		// ready, so it removes nothing.
		p.miss(w, r, info)
	case isCacheable(info) && info.Subresource == "" && info.Verb == "list":
		p.hits.Add(1)
		list, err := p.list(c, scopeOf(info))
		if err != nil {
			writeStatus(w, r, http.StatusInternalServerError, "InternalError", err.Error())
			return
		}
		writeObject(w, r, http.StatusOK, scopeOf(info).GVR.GroupVersion(), list)
	case isCacheable(info) && info.Subresource == "" && info.Verb == "watch":
		p.hits.Add(1)
		p.serveWatch(w, r, c, info)
	default:
		p.miss(w, r, info)
	}
}

func (p *Proxy) miss(w http.ResponseWriter, r *http.Request, info *request.RequestInfo) {
	p.misses.Add(1)
	what := info.Path
	if info.IsResourceRequest {
		what = info.Verb + " " + info.Resource
		if info.Subresource != "" {
			what += "/" + info.Subresource
		}
		if info.Name != "" {
			what += " " + info.Namespace + "/" + info.Name
		}
	}
	// No Retry-After: client-go would retry within the caller's timeout
	// instead of failing fast and keeping its own back-off.
	writeStatus(w, r, http.StatusServiceUnavailable, "ServiceUnavailable",
		"evelet apicache: the apiserver is unreachable and the node's cache cannot answer "+what)
}

// list builds the typed list of scope sc from the cache; its resource
// version is the one the scope was last seen at upstream, so a watch from
// it resumes there once the apiserver is back.
func (p *Proxy) list(c *client, sc Scope) (runtime.Object, error) {
	gv := sc.GVR.GroupVersion()
	list, err := scheme.Scheme.New(gv.WithKind(cacheable[sc.GVR.GroupResource()] + "List"))
	if err != nil {
		return nil, err
	}
	items := c.store.List(sc.GVR, sc)
	for i := range items {
		items[i] = items[i].DeepCopyObject()
	}
	if err := meta.SetList(list, items); err != nil {
		return nil, err
	}
	la, err := meta.ListAccessor(list)
	if err != nil {
		return nil, err
	}
	la.SetResourceVersion(p.scopeRV(c, sc, items))
	return list, nil
}

func (p *Proxy) scopeRV(c *client, sc Scope, items []runtime.Object) string {
	if rv := c.store.ScopeRV(sc); rv != "" {
		return rv
	}
	best := ""
	for _, o := range items {
		if m, err := meta.Accessor(o); err == nil && (best == "" || newerRV(m.GetResourceVersion(), best)) {
			best = m.GetResourceVersion()
		}
	}
	return best
}

// serveWatch holds a watch open from the cache until the apiserver is
// back (the client then re-watches through to it), the client goes, or
// its timeout ends. A watch-list gets the scope as ADDED events and the
// initial-events-end bookmark first.
func (p *Proxy) serveWatch(w http.ResponseWriter, r *http.Request, c *client, info *request.RequestInfo) {
	flip := p.flipped()
	if p.Online() {
		return // went online meanwhile: an empty watch, re-watched upstream
	}
	sinfo, err := negotiation.NegotiateOutputMediaTypeStream(r, codecs, negotiation.DefaultEndpointRestrictions)
	if err != nil {
		writeStatus(w, r, http.StatusNotAcceptable, "NotAcceptable", err.Error())
		return
	}
	sc := scopeOf(info)
	gv := sc.GVR.GroupVersion()
	ct := sinfo.MediaType
	if ct != runtime.ContentTypeJSON {
		ct += ";stream=watch"
	}
	w.Header().Set("Content-Type", ct)
	w.WriteHeader(http.StatusOK)
	enc := restclientwatch.NewEncoder(
		streaming.NewEncoder(sinfo.StreamSerializer.Framer.NewFrameWriter(w), sinfo.StreamSerializer.Serializer),
		codecs.EncoderForVersion(sinfo.Serializer, gv))
	if sendsInitialEvents(r) {
		items := c.store.List(sc.GVR, sc)
		for _, o := range items {
			if err := enc.Encode(&watch.Event{Type: watch.Added, Object: o.DeepCopyObject()}); err != nil {
				return
			}
		}
		bm, err := scheme.Scheme.New(gv.WithKind(cacheable[sc.GVR.GroupResource()]))
		if err != nil {
			return
		}
		m, _ := meta.Accessor(bm)
		m.SetResourceVersion(p.scopeRV(c, sc, items))
		m.SetAnnotations(map[string]string{metav1.InitialEventsAnnotationKey: "true"})
		if err := enc.Encode(&watch.Event{Type: watch.Bookmark, Object: bm}); err != nil {
			return
		}
	}
	if f, ok := w.(http.Flusher); ok {
		f.Flush()
	}
	timeout := 30 * time.Minute
	if s, err := strconv.Atoi(r.URL.Query().Get("timeoutSeconds")); err == nil && s > 0 {
		timeout = time.Duration(s) * time.Second
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-flip:
	case <-r.Context().Done():
	case <-t.C:
	}
}

// serveToken answers a TokenRequest with the token issued for the same
// request while online (same service account, audiences, expiry and bound
// pod): a pod restarted offline mounts the token it had, which the
// apiserver accepts until it expires.
func (p *Proxy) serveToken(w http.ResponseWriter, r *http.Request, c *client, info *request.RequestInfo) {
	key, err := tokenRequestKey(r, info)
	if err != nil {
		writeStatus(w, r, http.StatusBadRequest, "BadRequest", err.Error())
		return
	}
	b, ok := c.store.Token(key)
	if !ok {
		p.miss(w, r, info)
		return
	}
	var tr authnv1.TokenRequest
	if _, _, err := decoder.Decode(b, nil, &tr); err != nil {
		p.miss(w, r, info)
		return
	}
	p.hits.Add(1)
	writeObject(w, r, http.StatusCreated, authnv1.SchemeGroupVersion, &tr)
}

// writeObject encodes obj in the media type the client accepts.
func writeObject(w http.ResponseWriter, r *http.Request, code int, gv schema.GroupVersion, obj runtime.Object) {
	_, sinfo, err := negotiation.NegotiateOutputMediaType(r, codecs, negotiation.DefaultEndpointRestrictions)
	if err != nil {
		sinfo, _ = runtime.SerializerInfoForMediaType(codecs.SupportedMediaTypes(), runtime.ContentTypeJSON)
	}
	b, err := runtime.Encode(codecs.EncoderForVersion(sinfo.Serializer, gv), obj)
	if err != nil {
		writeStatus(w, r, http.StatusInternalServerError, "InternalError", err.Error())
		return
	}
	w.Header().Set("Content-Type", sinfo.MediaType)
	w.WriteHeader(code)
	_, _ = w.Write(b)
}

// writeStatus answers with a metav1.Status, as the apiserver does.
func writeStatus(w http.ResponseWriter, r *http.Request, code int, reason metav1.StatusReason, msg string) {
	st := &metav1.Status{Status: metav1.StatusFailure, Code: int32(code), Reason: reason, Message: msg}
	writeObject(w, r, code, schema.GroupVersion{Version: "v1"}, st)
}
