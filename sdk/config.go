package sdk

import (
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/go-viper/mapstructure/v2"
)

// ConfigField describes one setting an executor accepts. The host builds
// command-line flags (--<executor>-<name with dashes>) and documentation
// from it, and never logs the value of a Secret field.
type ConfigField struct {
	Name        string
	Type        string // one of the FieldType* constants
	Default     string
	Description string
	Required    bool
	Secret      bool
}

// The types a ConfigField can have.
const (
	FieldString   = "string"
	FieldBool     = "bool"
	FieldInt      = "int"
	FieldFloat    = "float"
	FieldDuration = "duration"
	FieldSize     = "size"
	FieldList     = "list"
	FieldMap      = "map"
)

// Size is a number of bytes. In settings it may be written as a number or
// as a string with a unit: "512m", "1.5g", "100MB", "2GiB", "64k".
type Size int64

// String prints the size with the largest binary unit that divides it.
func (s Size) String() string {
	units := []struct {
		suffix string
		n      int64
	}{{"g", 1 << 30}, {"m", 1 << 20}, {"k", 1 << 10}}
	for _, u := range units {
		if s != 0 && int64(s)%u.n == 0 {
			return strconv.FormatInt(int64(s)/u.n, 10) + u.suffix
		}
	}
	return strconv.FormatInt(int64(s), 10)
}

// ParseSize reads a size such as "512m", "2GiB", "100MB" or "4096".
func ParseSize(text string) (Size, error) {
	t := strings.ToLower(strings.TrimSpace(text))
	mult := []struct {
		suffix string
		n      float64
	}{
		{"kib", 1 << 10}, {"mib", 1 << 20}, {"gib", 1 << 30}, {"tib", 1 << 40},
		{"kb", 1e3}, {"mb", 1e6}, {"gb", 1e9}, {"tb", 1e12},
		{"k", 1 << 10}, {"m", 1 << 20}, {"g", 1 << 30}, {"t", 1 << 40}, {"b", 1},
	}
	factor := 1.0
	for _, m := range mult {
		if strings.HasSuffix(t, m.suffix) {
			factor = m.n
			t = strings.TrimSpace(strings.TrimSuffix(t, m.suffix))
			break
		}
	}
	v, err := strconv.ParseFloat(t, 64)
	if err != nil || v < 0 || t == "" {
		return 0, fmt.Errorf("%q is not a size (write e.g. 512m, 2GiB, 100MB or a number of bytes)", text)
	}
	return Size(v * factor), nil
}

// Schema describes the settings struct cfg for Info.Config. cfg holds the
// defaults. Each exported field with a `mapstructure:"name"` tag becomes one
// ConfigField; the tags `help:"…"`, `required:"true"` and `secret:"true"`
// fill in the rest. An embedded struct tagged `mapstructure:",squash"`
// contributes its fields in its place, as if they were cfg's own. Supported
// field types: string, bool, ints, floats, time.Duration, Size, []string and
// map[string]string.
func Schema(cfg any) []ConfigField {
	var fields []ConfigField
	eachSetting(reflect.Indirect(reflect.ValueOf(cfg)), func(name string, f reflect.StructField, v reflect.Value) {
		fields = append(fields, ConfigField{
			Name:        name,
			Type:        fieldType(f.Type),
			Default:     defaultText(v),
			Description: f.Tag.Get("help"),
			Required:    f.Tag.Get("required") == "true",
			Secret:      f.Tag.Get("secret") == "true",
		})
	})
	return fields
}

// eachSetting calls visit for each setting of the settings struct v, in
// order: its exported fields with a mapstructure name, and those of the
// embedded structs tagged ",squash" in their place.
func eachSetting(v reflect.Value, visit func(name string, f reflect.StructField, v reflect.Value)) {
	t := v.Type()
	for i := range t.NumField() {
		f := t.Field(i)
		name, opts, _ := strings.Cut(f.Tag.Get("mapstructure"), ",")
		if f.Anonymous && f.Type.Kind() == reflect.Struct && name == "" && slices.Contains(strings.Split(opts, ","), "squash") {
			eachSetting(v.Field(i), visit)
			continue
		}
		if name == "" || name == "-" || !f.IsExported() {
			continue
		}
		visit(name, f, v.Field(i))
	}
}

var (
	durationType = reflect.TypeOf(time.Duration(0))
	sizeType     = reflect.TypeOf(Size(0))
)

func fieldType(t reflect.Type) string {
	switch {
	case t == durationType:
		return FieldDuration
	case t == sizeType:
		return FieldSize
	}
	switch t.Kind() {
	case reflect.Bool:
		return FieldBool
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return FieldInt
	case reflect.Float32, reflect.Float64:
		return FieldFloat
	case reflect.Slice:
		return FieldList
	case reflect.Map:
		return FieldMap
	default:
		return FieldString
	}
}

func defaultText(v reflect.Value) string {
	if v.IsZero() {
		return ""
	}
	switch x := v.Interface().(type) {
	case []string:
		return strings.Join(x, ",")
	case map[string]string:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		parts := make([]string, 0, len(keys))
		for _, k := range keys {
			parts = append(parts, k+"="+x[k])
		}
		return strings.Join(parts, ",")
	default:
		return fmt.Sprint(x)
	}
}

// DecodeConfig decodes settings into cfg (a pointer to the settings struct,
// already holding the defaults). Strings are converted where the field
// wants another type ("30s" → time.Duration, "512m" → Size, "a,b" →
// []string, "true" → bool, "k=v,k2=v2" → map). An unknown key, a value of the
// wrong type or a missing required field is an error naming the key and the
// type it expects.
func DecodeConfig(settings map[string]any, cfg any) error {
	schema := Schema(cfg)
	known := make(map[string]ConfigField, len(schema))
	for _, f := range schema {
		known[f.Name] = f
	}
	var unknown []string
	for k := range settings {
		if _, ok := known[k]; !ok {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		slices.Sort(unknown)
		names := make([]string, 0, len(schema))
		for _, f := range schema {
			names = append(names, f.Name)
		}
		return fmt.Errorf("unknown setting %s (known settings: %s)", quoteAll(unknown), strings.Join(names, ", "))
	}
	// A table given in settings replaces the default table; mapstructure
	// would merge them.
	eachSetting(reflect.Indirect(reflect.ValueOf(cfg)), func(name string, f reflect.StructField, v reflect.Value) {
		if _, given := settings[name]; given && f.Type.Kind() == reflect.Map {
			v.SetZero()
		}
	})
	dec, err := mapstructure.NewDecoder(&mapstructure.DecoderConfig{
		Result:           cfg,
		WeaklyTypedInput: true,
		DecodeHook: mapstructure.ComposeDecodeHookFunc(
			sizeHook,
			mapHook,
			mapstructure.StringToTimeDurationHookFunc(),
			mapstructure.StringToSliceHookFunc(","),
		),
	})
	if err != nil {
		return fmt.Errorf("settings decoder: %w", err)
	}
	if err := dec.Decode(settings); err != nil {
		return describeDecodeError(err, known, settings)
	}
	for _, f := range schema {
		if !f.Required {
			continue
		}
		if v, ok := settings[f.Name]; !ok || fmt.Sprint(v) == "" {
			return fmt.Errorf("setting %q is required (%s): %s", f.Name, f.Type, f.Description)
		}
	}
	return nil
}

func quoteAll(names []string) string {
	q := make([]string, len(names))
	for i, n := range names {
		q[i] = strconv.Quote(n)
	}
	return strings.Join(q, ", ")
}

func describeDecodeError(err error, known map[string]ConfigField, settings map[string]any) error {
	var de *mapstructure.DecodeError
	if errors.As(err, &de) {
		name, _, _ := strings.Cut(de.Name(), "[")
		if f, ok := known[name]; ok {
			return fmt.Errorf("setting %q must be a %s, got %#v: %w", f.Name, typeHint(f.Type), settings[f.Name], de.Unwrap())
		}
	}
	return fmt.Errorf("settings: %w", err)
}

func typeHint(t string) string {
	switch t {
	case FieldDuration:
		return "duration (e.g. 30s, 5m, 1h)"
	case FieldSize:
		return "size (e.g. 512m, 2GiB, or bytes)"
	case FieldList:
		return "list of strings (or one comma-separated string)"
	case FieldMap:
		return "table of strings (or k=v,k2=v2)"
	default:
		return t
	}
}

func sizeHook(from, to reflect.Type, data any) (any, error) {
	if to != sizeType {
		return data, nil
	}
	switch from.Kind() {
	case reflect.String:
		return ParseSize(data.(string))
	default:
		return data, nil
	}
}

func mapHook(from, to reflect.Type, data any) (any, error) {
	if from.Kind() != reflect.String || to.Kind() != reflect.Map {
		return data, nil
	}
	out := map[string]string{}
	s := strings.TrimSpace(data.(string))
	if s == "" {
		return out, nil
	}
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return nil, fmt.Errorf("%q is not key=value", kv)
		}
		out[strings.TrimSpace(k)] = strings.TrimSpace(v)
	}
	return out, nil
}
