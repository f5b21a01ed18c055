package apicache

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net/http"

	authnv1 "k8s.io/api/authentication/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer/streaming"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/apiserver/pkg/endpoints/request"
	restclientwatch "k8s.io/client-go/rest/watch"
)

// maxBody bounds how much of one get or list response is buffered for the
// cache; a larger one is forwarded but not cached.
const maxBody = 32 << 20

// scopeOf is the cache scope of a resource request.
func scopeOf(info *request.RequestInfo) Scope {
	return Scope{
		GVR:       schema.GroupVersionResource{Group: info.APIGroup, Version: info.APIVersion, Resource: info.Resource},
		Namespace: info.Namespace, Fields: info.FieldSelector, Labels: info.LabelSelector,
	}
}

func isCacheable(info *request.RequestInfo) bool {
	_, ok := cacheable[schema.GroupResource{Group: info.APIGroup, Resource: info.Resource}]
	return ok && info.IsResourceRequest
}

func isTokenRequest(info *request.RequestInfo) bool {
	return info.IsResourceRequest && info.Verb == "create" && info.APIGroup == "" && info.Resource == "serviceaccounts" && info.Subresource == "token"
}

// tokenRequestKey reads (and puts back) a TokenRequest's body and names
// the token it asks for; "" for other requests.
func tokenRequestKey(r *http.Request, info *request.RequestInfo) (string, error) {
	if !isTokenRequest(info) || r.Body == nil {
		return "", nil
	}
	b, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	r.Body.Close()
	if err != nil {
		return "", err
	}
	r.Body = io.NopCloser(bytes.NewReader(b))
	r.ContentLength = int64(len(b))
	var tr authnv1.TokenRequest
	if _, _, err := decoder.Decode(b, nil, &tr); err != nil {
		return "", fmt.Errorf("token request: %w", err)
	}
	spec, _ := json.Marshal(tr.Spec)
	return tokenKey(info.Namespace, info.Name, spec), nil
}

// teeResponse lets the cache see what the apiserver answered: objects a
// client read or wrote, lists and watch streams, issued tokens.
func (p *Proxy) teeResponse(c *client, info *request.RequestInfo, tok string, resp *http.Response) {
	switch {
	case tok != "" && resp.StatusCode/100 == 2:
		resp.Body = bufferBody(resp, func(b []byte) {
			var tr authnv1.TokenRequest
			if _, _, err := decoder.Decode(b, nil, &tr); err != nil {
				return
			}
			if enc, err := encodeJSON(authnv1.SchemeGroupVersion, &tr); err == nil {
				p.note(c.store.PutToken(tok, enc))
			}
		})
	case !isCacheable(info) || (info.Subresource != "" && info.Subresource != "status"):
	case info.Verb == "get" && resp.StatusCode == http.StatusNotFound:
		p.note(c.store.Delete(scopeOf(info).GVR, info.Namespace+"/"+info.Name))
	case resp.StatusCode/100 != 2:
	case info.Verb == "watch":
		p.teeWatch(c, info, resp)
	case info.Verb == "list":
		sc := scopeOf(info)
		resp.Body = bufferBody(resp, func(b []byte) {
			obj, _, err := decoder.Decode(b, nil, nil)
			if err != nil {
				return
			}
			items, err := meta.ExtractList(obj)
			if err != nil {
				return
			}
			la, err := meta.ListAccessor(obj)
			if err != nil {
				return
			}
			p.note(c.store.Replace(sc.GVR, sc, items, la.GetResourceVersion()))
		})
	case info.Verb == "get", info.Verb == "create", info.Verb == "update", info.Verb == "patch":
		gvr := scopeOf(info).GVR
		resp.Body = bufferBody(resp, func(b []byte) {
			obj, _, err := decoder.Decode(b, nil, nil)
			if err != nil {
				return
			}
			if _, isStatus := obj.(*metav1.Status); !isStatus {
				p.note(c.store.Put(gvr, obj))
			}
		})
	}
}

func (p *Proxy) note(err error) {
	if err != nil {
		p.log.WithError(err).Warn("apicache: not stored")
	}
}

// bufferBody returns a body that passes resp's through and, once it was
// read to the end, hands the (decompressed) bytes to done.
func bufferBody(resp *http.Response, done func([]byte)) io.ReadCloser {
	return &teeBody{rc: resp.Body, gzip: resp.Header.Get("Content-Encoding") == "gzip", done: done}
}

type teeBody struct {
	rc   io.ReadCloser
	buf  bytes.Buffer
	gzip bool
	over bool
	done func([]byte)
}

func (t *teeBody) Read(b []byte) (int, error) {
	n, err := t.rc.Read(b)
	if !t.over {
		if t.buf.Len()+n > maxBody {
			t.over = true
			t.buf = bytes.Buffer{}
		} else {
			t.buf.Write(b[:n])
		}
	}
	if err == io.EOF && !t.over && t.done != nil {
		data := t.buf.Bytes()
		if t.gzip {
			if zr, zerr := gzip.NewReader(bytes.NewReader(data)); zerr == nil {
				data, _ = io.ReadAll(io.LimitReader(zr, maxBody))
			}
		}
		t.done(data)
		t.done = nil
	}
	return n, err
}

func (t *teeBody) Close() error { return t.rc.Close() }

// teeWatch decodes a watch stream on its way to the client. The client is
// never held up by the cache: the decoder reads a pipe the stream is copied
// into, and drains it if it cannot decode.
func (p *Proxy) teeWatch(c *client, info *request.RequestInfo, resp *http.Response) {
	mediaType, params, err := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if err != nil {
		return
	}
	sinfo, ok := runtime.SerializerInfoForMediaType(codecs.SupportedMediaTypes(), mediaType)
	if !ok || sinfo.StreamSerializer == nil {
		return
	}
	_ = params
	pr, pw := io.Pipe()
	resp.Body = &watchTee{rc: resp.Body, pw: pw}
	sc := scopeOf(info)
	initial := resp.Request != nil && sendsInitialEvents(resp.Request)
	go func() {
		var src io.Reader = pr
		if resp.Header.Get("Content-Encoding") == "gzip" {
			zr, err := gzip.NewReader(pr)
			if err != nil {
				_, _ = io.Copy(io.Discard, pr)
				return
			}
			src = zr
		}
		fr := sinfo.StreamSerializer.Framer.NewFrameReader(io.NopCloser(src))
		d := restclientwatch.NewDecoder(streaming.NewDecoder(fr, sinfo.StreamSerializer.Serializer), decoder)
		defer func() { _, _ = io.Copy(io.Discard, pr) }()
		seen := map[string]bool{}
		for {
			typ, obj, err := d.Decode()
			if err != nil {
				return
			}
			m, merr := meta.Accessor(obj)
			if merr != nil {
				continue
			}
			switch typ {
			case watch.Added, watch.Modified:
				p.note(c.store.Put(sc.GVR, obj))
				if initial {
					seen[objKey(obj)] = true
				} else {
					p.note(c.store.SetScopeRV(sc, m.GetResourceVersion()))
				}
			case watch.Deleted:
				p.note(c.store.Delete(sc.GVR, objKey(obj)))
				if !initial {
					p.note(c.store.SetScopeRV(sc, m.GetResourceVersion()))
				}
			case watch.Bookmark:
				if initial && m.GetAnnotations()[metav1.InitialEventsAnnotationKey] == "true" {
					// The initial events were the whole scope:
					// what the cache held beyond them is gone.
					for _, o := range c.store.List(sc.GVR, sc) {
						if k := objKey(o); !seen[k] {
							p.note(c.store.Delete(sc.GVR, k))
						}
					}
					initial = false
				}
				if !initial {
					p.note(c.store.SetScopeRV(sc, m.GetResourceVersion()))
				}
			}
		}
	}()
}

// sendsInitialEvents: a watch-list (client-go's WatchListClient, on by
// default in 1.35) that starts with the whole scope as ADDED events and a
// bookmark annotated k8s.io/initial-events-end.
func sendsInitialEvents(r *http.Request) bool {
	return r.URL.Query().Get("sendInitialEvents") == "true"
}

type watchTee struct {
	rc io.ReadCloser
	pw *io.PipeWriter
}

func (t *watchTee) Read(b []byte) (int, error) {
	n, err := t.rc.Read(b)
	if n > 0 {
		if _, werr := t.pw.Write(b[:n]); werr != nil {
			// The decoder stopped; the client's stream goes on.
			t.pw = nil
		}
	}
	if err != nil && t.pw != nil {
		t.pw.CloseWithError(err)
	}
	return n, err
}

func (t *watchTee) Close() error {
	if t.pw != nil {
		t.pw.Close()
	}
	return t.rc.Close()
}
