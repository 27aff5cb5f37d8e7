package sdk

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

type testSettings struct {
	Name     string            `mapstructure:"name" help:"a name" required:"true"`
	Token    string            `mapstructure:"token" secret:"true"`
	Wait     time.Duration     `mapstructure:"wait"`
	Memory   Size              `mapstructure:"memory"`
	Count    int               `mapstructure:"count"`
	Ratio    float64           `mapstructure:"ratio"`
	On       bool              `mapstructure:"on"`
	Hosts    []string          `mapstructure:"hosts"`
	Labels   map[string]string `mapstructure:"labels"`
	internal string
}

func defaults() testSettings {
	return testSettings{Wait: 30 * time.Second, Memory: 512 << 20, Hosts: []string{"a"}, Labels: map[string]string{"x": "1"}}
}

func TestSchema(t *testing.T) {
	got := Schema(defaults())
	want := []ConfigField{
		{Name: "name", Type: FieldString, Description: "a name", Required: true},
		{Name: "token", Type: FieldString, Secret: true},
		{Name: "wait", Type: FieldDuration, Default: "30s"},
		{Name: "memory", Type: FieldSize, Default: "512m"},
		{Name: "count", Type: FieldInt},
		{Name: "ratio", Type: FieldFloat},
		{Name: "on", Type: FieldBool},
		{Name: "hosts", Type: FieldList, Default: "a"},
		{Name: "labels", Type: FieldMap, Default: "x=1"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Schema =\n%+v\nwant\n%+v", got, want)
	}
}

func TestDecodeConfig(t *testing.T) {
	tests := []struct {
		name     string
		settings map[string]any
		want     func(*testSettings)
		wantErr  []string
	}{
		{
			name:     "strings converted to every type",
			settings: map[string]any{"name": "n", "wait": "5m", "memory": "2GiB", "count": "3", "ratio": "0.5", "on": "true", "hosts": "h1,h2", "labels": "k=v,k2=v2"},
			want: func(s *testSettings) {
				s.Name, s.Wait, s.Memory, s.Count, s.Ratio, s.On = "n", 5*time.Minute, 2<<30, 3, 0.5, true
				s.Hosts, s.Labels = []string{"h1", "h2"}, map[string]string{"k": "v", "k2": "v2"}
			},
		},
		{
			name:     "native types, and a table replaces the default table",
			settings: map[string]any{"name": "n", "count": 4, "memory": 1024, "hosts": []any{"z"}, "labels": map[string]any{"only": "this"}},
			want: func(s *testSettings) {
				s.Name, s.Count, s.Memory, s.Hosts, s.Labels = "n", 4, 1024, []string{"z"}, map[string]string{"only": "this"}
			},
		},
		{name: "unknown key", settings: map[string]any{"name": "n", "colour": "red"}, wantErr: []string{`"colour"`, "known settings", "wait"}},
		{name: "wrong type", settings: map[string]any{"name": "n", "wait": "soon"}, wantErr: []string{`"wait"`, "duration"}},
		{name: "bad size", settings: map[string]any{"name": "n", "memory": "lots"}, wantErr: []string{`"memory"`, "size"}},
		{name: "bad int", settings: map[string]any{"name": "n", "count": "three"}, wantErr: []string{`"count"`, "int"}},
		{name: "bad map", settings: map[string]any{"name": "n", "labels": "novalue"}, wantErr: []string{`"labels"`}},
		{name: "required missing", settings: map[string]any{}, wantErr: []string{`"name"`, "required"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := defaults()
			err := DecodeConfig(tt.settings, &got)
			if len(tt.wantErr) > 0 {
				if err == nil {
					t.Fatalf("no error; want one saying %v", tt.wantErr)
				}
				for _, w := range tt.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q does not say %q", err, w)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want := defaults()
			tt.want(&want)
			if !reflect.DeepEqual(got, want) {
				t.Errorf("decoded\n%+v\nwant\n%+v", got, want)
			}
		})
	}
}

func TestParseSize(t *testing.T) {
	tests := []struct {
		in   string
		want Size
		bad  bool
	}{
		{in: "4096", want: 4096},
		{in: "64k", want: 64 << 10},
		{in: "512m", want: 512 << 20},
		{in: "1.5g", want: 3 << 29},
		{in: "2GiB", want: 2 << 30},
		{in: "100MB", want: 100e6},
		{in: " 7 b ", want: 7},
		{in: "", bad: true},
		{in: "-1m", bad: true},
		{in: "12q", bad: true},
	}
	for _, tt := range tests {
		got, err := ParseSize(tt.in)
		if (err != nil) != tt.bad || (!tt.bad && got != tt.want) {
			t.Errorf("ParseSize(%q) = %d, %v; want %d (error %v)", tt.in, got, err, tt.want, tt.bad)
		}
	}
}

// Login is a group of settings that several settings structs embed.
type Login struct {
	User   string            `mapstructure:"user" required:"true" help:"who"`
	Secret string            `mapstructure:"secret" secret:"true"`
	Extra  map[string]string `mapstructure:"extra"`
}

type embeddingSettings struct {
	Host  string `mapstructure:"host"`
	Login `mapstructure:",squash"`
	Port  int `mapstructure:"port"`
	// Other is embedded without squash: it is not a group of settings.
	Other testSettings
}

func embeddingDefaults() embeddingSettings {
	return embeddingSettings{Port: 22, Login: Login{User: "me", Extra: map[string]string{"a": "1"}}}
}

// An embedded struct tagged ",squash" contributes its settings in its
// place, and they decode like the struct's own.
func TestSquashedSettings(t *testing.T) {
	got := Schema(embeddingDefaults())
	want := []ConfigField{
		{Name: "host", Type: FieldString},
		{Name: "user", Type: FieldString, Default: "me", Description: "who", Required: true},
		{Name: "secret", Type: FieldString, Secret: true},
		{Name: "extra", Type: FieldMap, Default: "a=1"},
		{Name: "port", Type: FieldInt, Default: "22"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Schema =\n%+v\nwant\n%+v", got, want)
	}

	s := embeddingDefaults()
	if err := DecodeConfig(map[string]any{"host": "h", "user": "u", "secret": "s", "extra": "b=2", "port": "2222"}, &s); err != nil {
		t.Fatal(err)
	}
	wantS := embeddingSettings{Host: "h", Port: 2222, Login: Login{User: "u", Secret: "s", Extra: map[string]string{"b": "2"}}}
	if !reflect.DeepEqual(s, wantS) {
		t.Errorf("decoded\n%+v\nwant\n%+v", s, wantS)
	}

	for _, tt := range []struct {
		settings map[string]any
		wantErr  []string
	}{
		{map[string]any{"user": "u", "port": "many"}, []string{`"port"`, "int"}},
		{map[string]any{"user": "u", "extra": "novalue"}, []string{`"extra"`}},
		{map[string]any{"user": ""}, []string{`"user"`, "required"}},
		{map[string]any{"user": "u", "Other": "x"}, []string{`"Other"`, "known settings: host, user, secret, extra, port"}},
	} {
		s := embeddingDefaults()
		err := DecodeConfig(tt.settings, &s)
		if err == nil {
			t.Errorf("settings %v: no error; want one saying %v", tt.settings, tt.wantErr)
			continue
		}
		for _, w := range tt.wantErr {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("settings %v: error %q does not say %q", tt.settings, err, w)
			}
		}
	}
}
