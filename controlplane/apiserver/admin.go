package apiserver

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/nodetrust/nodetrust/controlplane/instances"
	"github.com/nodetrust/nodetrust/controlplane/store"
	"github.com/nodetrust/nodetrust/controlplane/tokens"
)

// AdminGroup is the API group of nodetrust's admin endpoints; they are
// plain JSON, not Kubernetes objects, and only admins may call them.
const AdminGroup = "nodetrust.dev"

var (
	tokenResource    = schema.GroupResource{Group: AdminGroup, Resource: "bootstraptokens"}
	instanceResource = schema.GroupResource{Group: AdminGroup, Resource: "instances"}
)

// TokenCreateRequest is the body of POST .../bootstraptokens.
type TokenCreateRequest struct {
	TTL         string   `json:"ttl"` // Go duration; "0" or "" for none
	Description string   `json:"description,omitempty"`
	ExtraGroups []string `json:"extraGroups,omitempty"`
}

// TokenCreateResponse carries the whole token, shown only once.
type TokenCreateResponse struct {
	Token   string    `json:"token"`
	ID      string    `json:"id"`
	Expires time.Time `json:"expires,omitzero"`
}

// TokenInfo describes a token without its secret.
type TokenInfo struct {
	ID          string    `json:"id"`
	Expires     time.Time `json:"expires,omitzero"`
	Description string    `json:"description,omitempty"`
	ExtraGroups []string  `json:"extraGroups,omitempty"`
	Created     time.Time `json:"created"`
	Expired     bool      `json:"expired"`
}

func (s *Server) adminRoutes(m *http.ServeMux) {
	base := "/apis/" + AdminGroup + "/v1/"
	m.HandleFunc("POST "+base+"bootstraptokens", s.admin(s.createToken))
	m.HandleFunc("GET "+base+"bootstraptokens", s.admin(s.listTokens))
	m.HandleFunc("DELETE "+base+"bootstraptokens/{id}", s.admin(s.deleteToken))
	m.HandleFunc("POST "+base+"instances", s.admin(s.registerInstance))
	m.HandleFunc("GET "+base+"instances", s.admin(s.listInstances))
	m.HandleFunc("DELETE "+base+"instances/{name}", s.admin(s.unregisterInstance))
}

func (s *Server) admin(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if u := userFrom(r.Context()); !u.admin() {
			writeStatus(w, apierrors.NewForbidden(tokenResource, "", fmt.Errorf("user %q is not an admin", u.Name)))
			return
		}
		h(w, r)
	}
}

func (s *Server) createToken(w http.ResponseWriter, r *http.Request) {
	b, err := s.readBody(w, r)
	if err != nil {
		writeStatus(w, err)
		return
	}
	var in TokenCreateRequest
	if err := json.Unmarshal(b, &in); err != nil {
		writeStatus(w, apierrors.NewBadRequest("decode token request: "+err.Error()))
		return
	}
	var ttl time.Duration
	if in.TTL != "" {
		if ttl, err = time.ParseDuration(in.TTL); err != nil || ttl < 0 {
			writeStatus(w, apierrors.NewBadRequest(fmt.Sprintf("ttl %q is not a non-negative duration", in.TTL)))
			return
		}
	}
	tok, t, err := s.cfg.Tokens.Create(ttl, in.Description, in.ExtraGroups)
	if err != nil {
		if errors.Is(err, tokens.ErrBadGroup) {
			writeStatus(w, apierrors.NewBadRequest(err.Error()))
			return
		}
		writeStatus(w, apierrors.NewInternalError(err))
		return
	}
	s.log.Info("bootstrap token created", "token_id", t.ID, "expires", t.Expires, "user", userFrom(r.Context()).Name)
	writeJSON(w, http.StatusCreated, TokenCreateResponse{Token: tok, ID: t.ID, Expires: t.Expires})
}

func (s *Server) listTokens(w http.ResponseWriter, r *http.Request) {
	ts, err := s.cfg.Tokens.List()
	if err != nil {
		writeStatus(w, apierrors.NewInternalError(err))
		return
	}
	now := s.clk.Now()
	out := make([]TokenInfo, 0, len(ts))
	for _, t := range ts {
		out = append(out, TokenInfo{ID: t.ID, Expires: t.Expires, Description: t.Description, ExtraGroups: t.ExtraGroups, Created: t.Created, Expired: t.Expired(now)})
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) deleteToken(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if err := s.cfg.Tokens.Delete(id); err != nil {
		if errors.Is(err, tokens.ErrUnknown) {
			writeStatus(w, apierrors.NewNotFound(tokenResource, id))
			return
		}
		writeStatus(w, apierrors.NewInternalError(err))
		return
	}
	s.log.Info("bootstrap token deleted", "token_id", id)
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) registerInstance(w http.ResponseWriter, r *http.Request) {
	b, err := s.readBody(w, r)
	if err != nil {
		writeStatus(w, err)
		return
	}
	var in instances.Instance
	if err := json.Unmarshal(b, &in); err != nil {
		writeStatus(w, apierrors.NewBadRequest("decode instance: "+err.Error()))
		return
	}
	if err := s.cfg.Registry.Register(in); err != nil {
		if errors.Is(err, instances.ErrInvalid) {
			writeStatus(w, apierrors.NewBadRequest(err.Error()))
			return
		}
		writeStatus(w, apierrors.NewInternalError(err))
		return
	}
	s.log.Info("instance registered", "instance", in.Name)
	writeJSON(w, http.StatusCreated, in)
}

func (s *Server) listInstances(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, s.cfg.Registry.List())
}

func (s *Server) unregisterInstance(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if err := s.cfg.Registry.Unregister(name); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			writeStatus(w, apierrors.NewNotFound(instanceResource, name))
			return
		}
		writeStatus(w, apierrors.NewInternalError(err))
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
