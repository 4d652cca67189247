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
// them (called before fn for the entry a reveal writes first, after fn
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
	entry := func() audit.Entry {
		e := audit.Entry{Time: s.GW.Now(), Operator: o.Name, Role: role, Action: action, Reason: reason}
		switch ts := targets(); len(ts) {
		case 0:
		case 1:
			e.Target = ts[0].String()
		default:
			e.Targets = make([]string, len(ts))
			for i, t := range ts {
				e.Targets[i] = t.String()
			}
		}
		return e
	}
	var e audit.Entry
	if before {
		e = entry()
		e.Result = "attempt"
		if _, err := s.Audit.Append(e); err != nil {
			return status.Error(codes.Unavailable, "audit log unavailable; refusing to reveal personal data")
		}
		// The result entry follows; a list of targets is named once, here.
		e.Targets = nil
	}
	err := fn()
	if !before {
		e = entry()
	}
	e.Result = "ok"
	if err != nil {
		e.Result = status.Code(toStatus(err)).String()
	}
	if _, aerr := s.Audit.Append(e); aerr != nil && err == nil {
		return status.Error(codes.Internal, "done, but writing the audit log failed")
	}
	return err
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
