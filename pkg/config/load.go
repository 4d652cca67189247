package config

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/go-viper/mapstructure/v2"
	"github.com/spf13/pflag"
	"github.com/spf13/viper"
)

// EnvPrefix prefixes every environment variable the gateway reads.
const EnvPrefix = "DASSET"

// field is one leaf key of Config.
type field struct {
	key   string        // dotted key, e.g. "tunnel.mode"
	path  []int         // reflect field index path from Config
	typ   reflect.Type  // the field's type
	usage string        // flag help text; "" for keys without a flag
	def   reflect.Value // the default value
}

var (
	durationType = reflect.TypeFor[time.Duration]()
	prefixType   = reflect.TypeFor[netip.Prefix]()
	stringsType  = reflect.TypeFor[[]string]()
)

// fields lists every leaf key of Config, in declaration order.
func fields() []field {
	var out []field
	var walk func(t reflect.Type, def reflect.Value, prefix string, path []int)
	walk = func(t reflect.Type, def reflect.Value, prefix string, path []int) {
		for i := range t.NumField() {
			sf := t.Field(i)
			name := sf.Tag.Get("mapstructure")
			if name == "" {
				continue
			}
			key := prefix + name
			p := append(slices.Clone(path), i)
			if sf.Type.Kind() == reflect.Struct && sf.Type != prefixType {
				walk(sf.Type, def.Field(i), key+".", p)
				continue
			}
			out = append(out, field{key: key, path: p, typ: sf.Type, usage: sf.Tag.Get("usage"), def: def.Field(i)})
		}
	}
	walk(reflect.TypeFor[Config](), reflect.ValueOf(Default()), "", nil)
	return out
}

// Keys returns every configuration key in dotted form, in the order of the
// Config struct.
func Keys() []string {
	fs := fields()
	keys := make([]string, len(fs))
	for i, f := range fs {
		keys[i] = f.key
	}
	return keys
}

// EnvVar returns the environment variable of key: "tunnel.mode" →
// "DASSET_TUNNEL_MODE".
func EnvVar(key string) string {
	return EnvPrefix + "_" + strings.ToUpper(strings.ReplaceAll(key, ".", "_"))
}

// BindFlags registers one flag per key that has one, named by its dotted key
// (--tunnel.mode, --grpc.listen, ...), showing its default. List keys take
// comma-separated values; admin.operators has no flag (use the file). The
// caller owns any other flag, such as --config.
func BindFlags(fs *pflag.FlagSet) {
	for _, f := range fields() {
		if f.usage == "" {
			continue
		}
		usage := f.usage + " (env " + EnvVar(f.key) + ")"
		switch f.typ {
		case durationType:
			fs.Duration(f.key, time.Duration(f.def.Int()), usage)
		case prefixType:
			fs.String(f.key, f.def.Interface().(netip.Prefix).String(), usage)
		case stringsType:
			fs.StringSlice(f.key, f.def.Interface().([]string), usage)
		default:
			switch f.typ.Kind() {
			case reflect.String:
				fs.String(f.key, f.def.String(), usage)
			case reflect.Bool:
				fs.Bool(f.key, f.def.Bool(), usage)
			case reflect.Int:
				fs.Int(f.key, int(f.def.Int()), usage)
			default:
				panic(fmt.Sprintf("config: no flag type for %s (%s)", f.key, f.typ))
			}
		}
	}
}

// Load reads the configuration: Default(), then the YAML file at path (none
// when path is ""), then DASSET_* environment variables, then the flags of
// fs that were set on the command line (fs may be nil; flags it lacks are
// skipped). A key in the file that Config does not have is an error, as is a
// value of the wrong type; every error names its key. An empty environment
// variable counts as unset.
//
// Load does not call Validate.
func Load(path string, fs *pflag.FlagSet) (Config, error) {
	all := fields()
	v := viper.New()
	if path != "" {
		v.SetConfigFile(path)
		v.SetConfigType("yaml")
		if err := v.ReadInConfig(); err != nil {
			return Config{}, fmt.Errorf("config file %s: %w", path, err)
		}
		// Only the file is loaded yet: AllKeys are the file's keys.
		if err := checkKeys(v, all); err != nil {
			return Config{}, fmt.Errorf("config file %s: %w", path, err)
		}
	}
	v.SetEnvPrefix(EnvPrefix)
	v.SetEnvKeyReplacer(strings.NewReplacer(".", "_"))
	for _, f := range all {
		if err := v.BindEnv(f.key); err != nil {
			return Config{}, fmt.Errorf("config: %s: %w", f.key, err)
		}
		if fs == nil {
			continue
		}
		if fl := fs.Lookup(f.key); fl != nil {
			if err := v.BindPFlag(f.key, fl); err != nil {
				return Config{}, fmt.Errorf("config: flag --%s: %w", f.key, err)
			}
		}
	}

	cfg := Default()
	root := reflect.ValueOf(&cfg).Elem()
	var errs []error
	for _, f := range all {
		if !v.IsSet(f.key) {
			continue
		}
		raw := v.Get(f.key)
		val, err := decode(f.key, raw, f.typ)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		root.FieldByIndex(f.path).Set(val)
	}
	if err := errors.Join(errs...); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// checkKeys reports every key of the file in v that is not a key of Config.
func checkKeys(v *viper.Viper, all []field) error {
	leaves := map[string]bool{}
	sections := map[string][]string{} // section ("" = top level) → its keys, in order
	for _, f := range all {
		leaves[f.key] = true
		parts := strings.Split(f.key, ".")
		for i := range parts {
			sec := strings.Join(parts[:i], ".")
			if !slices.Contains(sections[sec], parts[i]) {
				sections[sec] = append(sections[sec], parts[i])
			}
		}
	}
	keys := v.AllKeys()
	slices.Sort(keys)
	var errs []error
	for _, k := range keys {
		switch {
		case leaves[k]:
		case sections[k] != nil:
			if v.Get(k) != nil { // an empty "tunnel:" is fine
				errs = append(errs, fmt.Errorf("%s: must be a mapping of keys (%s), got %s",
					k, strings.Join(sections[k], ", "), describe(v.Get(k))))
			}
		default:
			sec := ""
			if i := strings.LastIndexByte(k, '.'); i >= 0 {
				sec = k[:i]
			}
			switch {
			case leaves[sec]:
				errs = append(errs, fmt.Errorf("%s: must be a single value, not a mapping", sec))
			case sections[sec] != nil:
				where := "top-level keys"
				if sec != "" {
					where = "keys of " + sec
				}
				errs = append(errs, fmt.Errorf("%s: unknown key (%s: %s)", k, where, strings.Join(sections[sec], ", ")))
			default:
				errs = append(errs, fmt.Errorf("%s: unknown key", k))
			}
		}
	}
	return errors.Join(slices.CompactFunc(errs, func(a, b error) bool { return a.Error() == b.Error() })...)
}

// decode turns a value from the file, the environment or a flag into typ.
func decode(key string, raw any, typ reflect.Type) (reflect.Value, error) {
	out := reflect.New(typ)
	dec, err := mapstructure.NewDecoder(&mapstructure.DecoderConfig{
		DecodeHook: mapstructure.ComposeDecodeHookFunc(
			strictHook,
			mapstructure.StringToTimeDurationHookFunc(),
			mapstructure.StringToNetIPPrefixHookFunc(),
			mapstructure.StringToSliceHookFunc(","),
			mapstructure.StringToBasicTypeHookFunc(),
		),
		ErrorUnused: true,
		Result:      out.Interface(),
	})
	if err != nil {
		return reflect.Value{}, fmt.Errorf("%s: %w", key, err)
	}
	if err := dec.Decode(raw); err != nil {
		return reflect.Value{}, decodeError(key, raw, typ, err)
	}
	val := out.Elem()
	if val.Kind() == reflect.Slice && val.Len() == 0 {
		val = reflect.Zero(typ) // "[]" and "" mean the same as unset: nil
	}
	if typ == stringsType {
		for i := range val.Len() {
			s := val.Index(i)
			s.SetString(strings.TrimSpace(s.String()))
		}
	}
	return val, nil
}

// strictHook refuses the conversions mapstructure would otherwise make
// silently: a bare number other than 0 as a duration (nanoseconds), a
// fraction as an integer, a number as a prefix.
func strictHook(from, to reflect.Type, data any) (any, error) {
	switch {
	case to == durationType && from.Kind() != reflect.String && from != durationType:
		if v := reflect.ValueOf(data); v.CanInt() && v.Int() == 0 {
			return time.Duration(0), nil // 0 needs no unit
		}
		return nil, errors.New("a bare number has no unit")
	case to.Kind() == reflect.Int && (from.Kind() == reflect.Float64 || from.Kind() == reflect.Float32):
		f := reflect.ValueOf(data).Float()
		if f != math.Trunc(f) || math.Abs(f) > math.MaxInt32 {
			return nil, errors.New("not a whole number")
		}
	case to == prefixType && from.Kind() != reflect.String && from != prefixType:
		return nil, errors.New("not a string")
	}
	return data, nil
}

// decodeError rewrites a mapstructure error so each problem starts with the
// full key (including list indexes and nested names) and says what was
// expected and what was given.
func decodeError(key string, raw any, typ reflect.Type, err error) error {
	var errs []error
	var walk func(error)
	walk = func(err error) {
		if j, ok := err.(interface{ Unwrap() []error }); ok {
			for _, e := range j.Unwrap() {
				walk(e)
			}
			return
		}
		if u := errors.Unwrap(err); u != nil && strings.HasPrefix(err.Error(), "decoding failed") {
			walk(u)
			return
		}
		name, inner := key, err
		if de, ok := err.(*mapstructure.DecodeError); ok {
			inner = de.Unwrap()
			if n := de.Name(); n != "" {
				if !strings.HasPrefix(n, "[") {
					n = "." + n
				}
				name += n
			}
		}
		if name != key {
			msg := inner.Error()
			if unknown, ok := strings.CutPrefix(msg, "has invalid keys: "); ok {
				for _, k := range strings.Split(unknown, ", ") {
					errs = append(errs, fmt.Errorf("%s.%s: unknown key (keys: %s)", name, k, structKeys(typ)))
				}
				return
			}
			errs = append(errs, fmt.Errorf("%s: %s", name, msg))
			return
		}
		errs = append(errs, fmt.Errorf("%s: must be %s, got %s (%v)", key, expected(typ), describe(raw), inner))
	}
	walk(err)
	return errors.Join(errs...)
}

// expected says in words what a value of typ looks like.
func expected(typ reflect.Type) string {
	switch {
	case typ == durationType:
		return `a duration with a unit, such as "25s" or "15m"`
	case typ == prefixType:
		return `a prefix such as "100.80.0.0/12"`
	case typ == stringsType:
		return "a list of strings"
	case typ.Kind() == reflect.Slice:
		return "a list"
	case typ.Kind() == reflect.Int:
		return "a whole number"
	case typ.Kind() == reflect.Bool:
		return "true or false"
	case typ.Kind() == reflect.String:
		return "a string"
	}
	return typ.String()
}

// structKeys lists the mapstructure keys of typ's element struct.
func structKeys(typ reflect.Type) string {
	for typ.Kind() == reflect.Slice || typ.Kind() == reflect.Pointer {
		typ = typ.Elem()
	}
	if typ.Kind() != reflect.Struct {
		return ""
	}
	var names []string
	for i := range typ.NumField() {
		if n := typ.Field(i).Tag.Get("mapstructure"); n != "" {
			names = append(names, n)
		}
	}
	return strings.Join(names, ", ")
}

// describe says what a raw value is, for error messages.
func describe(v any) string {
	switch v := v.(type) {
	case nil:
		return "nothing"
	case string:
		return fmt.Sprintf("%q", v)
	case map[string]any:
		return "a mapping"
	case []any:
		return "a list"
	default:
		return fmt.Sprintf("%v (%T)", v, v)
	}
}
