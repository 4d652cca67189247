package api

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/planetxlabs/dasset-gateway/pkg/audit"
	"github.com/planetxlabs/dasset-gateway/pkg/gateway"
	"github.com/planetxlabs/dasset-gateway/pkg/privacy"
	gatewayv1 "github.com/planetxlabs/dasset-gateway/proto/dasset/gateway/v1"
)

// AuditLog records admin calls that reveal or change personal data.
type AuditLog interface {
	Append(e audit.Entry) (audit.Entry, error)
	Verify() (int, error)
}

// audited runs fn and writes an audit entry with its result. When the entry
// cannot be written the call fails: an unaudited reveal must not happen, so
// reveals write their entry first (before=true).
func (s *AdminServer) audited(ctx context.Context, action string, target privacy.BlindIndex, reason string, before bool, fn func() error) error {
	var targets []privacy.BlindIndex
	if target != (privacy.BlindIndex{}) {
		targets = []privacy.BlindIndex{target}
	}
	return s.auditedAll(ctx, action, func() []privacy.BlindIndex { return targets }, reason, before, fn)
}

// auditedAll is audited for a call about several subjects: targets names
// them (called before fn for the entries a reveal writes first, after fn
// otherwise, so fn may find them).
func (s *AdminServer) auditedAll(ctx context.Context, action string, targets func() []privacy.BlindIndex, reason string, before bool, fn func() error) error {
	if s.Audit == nil {
		return fn()
	}
	o, _ := OperatorFrom(ctx)
	role := string(RoleOperator)
	if o.Has(RolePrivacy) {
		role = string(RolePrivacy)
	}
	base := audit.Entry{Time: s.GW.Now(), Operator: o.Name, Role: role, Action: action, Reason: reason}
	if before {
		for _, e := range auditEntries(base, targets()) {
			e.Result = "attempt"
			if _, err := s.Audit.Append(e); err != nil {
				return status.Error(codes.Unavailable, "audit log unavailable; refusing to reveal personal data")
			}
		}
	}
	err := fn()
	result := "ok"
	if err != nil {
		result = status.Code(toStatus(err)).String()
	}
	entries := []audit.Entry{base} // after a reveal: the attempts named a list of targets
	if ts := targets(); !before || len(ts) == 1 {
		entries = auditEntries(base, ts)
	}
	for _, e := range entries {
		e.Result = result
		if _, aerr := s.Audit.Append(e); aerr != nil && err == nil {
			return status.Error(codes.Internal, "done, but writing the audit log failed")
		}
	}
	return err
}

// maxAuditTargets bounds the targets one audit entry names (about 67 KB a
// line, far under the line length the audit log reads back); a call about
// more subjects is written as consecutive entries.
const maxAuditTargets = 1000

// auditEntries is base naming targets: one target in Target, several in
// Targets, split into entries of at most maxAuditTargets.
func auditEntries(base audit.Entry, targets []privacy.BlindIndex) []audit.Entry {
	switch len(targets) {
	case 0:
		return []audit.Entry{base}
	case 1:
		base.Target = targets[0].String()
		return []audit.Entry{base}
	}
	var out []audit.Entry
	for start := 0; start < len(targets); start += maxAuditTargets {
		part := targets[start:min(start+maxAuditTargets, len(targets))]
		e := base
		e.Targets = make([]string, len(part))
		for i, t := range part {
			e.Targets[i] = t.String()
		}
		out = append(out, e)
	}
	return out
}

func subjectOf(serial, account string) (gateway.Subject, error) {
	switch {
	case serial != "" && account != "":
		return gateway.Subject{}, invalid("subject", "give a serial_number or an account, not both")
	case serial != "":
		sn, err := privacy.ParseSerialNumber(serial)
		if err != nil {
			return gateway.Subject{}, toStatus(err)
		}
		return gateway.Subject{Serial: sn}, nil
	case account != "":
		return gateway.Subject{Account: account}, nil
	default:
		return gateway.Subject{}, invalid("subject", "a serial_number or an account is required")
	}
}

// ExportSubject returns every stored row about one subject (privacy role).
func (s *AdminServer) ExportSubject(ctx context.Context, req *gatewayv1.ExportSubjectRequest) (*gatewayv1.ExportSubjectResponse, error) {
	if req.GetReason() == "" {
		return nil, invalid("reason", "required to export personal data")
	}
	subj, err := subjectOf(req.GetSerialNumber(), req.GetAccount())
	if err != nil {
		return nil, err
	}
	var out []byte
	err = s.audited(ctx, "export_subject", s.GW.SubjectIndex(subj), req.GetReason(), true, func() error {
		var err error
		out, err = s.GW.Export(ctx, subj)
		return err
	})
	if err != nil {
		return nil, toStatus(err)
	}
	return &gatewayv1.ExportSubjectResponse{Json: string(out)}, nil
}

// EraseSubject deletes everything about one subject (privacy role).
func (s *AdminServer) EraseSubject(ctx context.Context, req *gatewayv1.EraseSubjectRequest) (*gatewayv1.EraseSubjectResponse, error) {
	if req.GetReason() == "" {
		return nil, invalid("reason", "required to erase personal data")
	}
	subj, err := subjectOf(req.GetSerialNumber(), req.GetAccount())
	if err != nil {
		return nil, err
	}
	var receipt map[string]int64
	err = s.audited(ctx, "erase_subject", s.GW.SubjectIndex(subj), req.GetReason(), false, func() error {
		var err error
		receipt, err = s.GW.Erase(ctx, subj)
		return err
	})
	if err != nil {
		return nil, toStatus(err)
	}
	return &gatewayv1.EraseSubjectResponse{Removed: receipt}, nil
}

// VerifyAudit checks the audit log's chain.
func (s *AdminServer) VerifyAudit(context.Context, *gatewayv1.VerifyAuditRequest) (*gatewayv1.VerifyAuditResponse, error) {
	if s.Audit == nil {
		return nil, status.Error(codes.Unavailable, "no audit log")
	}
	n, err := s.Audit.Verify()
	if errors.Is(err, audit.ErrBroken) {
		return &gatewayv1.VerifyAuditResponse{Entries: int64(n), Ok: false, Problem: err.Error()}, nil
	}
	if err != nil {
		return nil, status.Error(codes.Internal, "reading the audit log failed: "+err.Error())
	}
	return &gatewayv1.VerifyAuditResponse{Entries: int64(n), Ok: true}, nil
}
