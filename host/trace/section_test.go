package trace

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestSectionMarkers(t *testing.T) {
	at := time.Unix(1700000000, 999_000_000)
	tests := []struct {
		name, section, header string
		wantStart, wantEnd    string
	}{
		{
			name: "plain", section: "step_script", header: "Executing step_script",
			wantStart: "section_start:1700000000:step_script\r\x1b[0KExecuting step_script\n",
			wantEnd:   "section_end:1700000000:step_script\r\x1b[0K",
		},
		{
			name: "allowed punctuation kept", section: "get-sources.v2_x", header: "",
			wantStart: "section_start:1700000000:get-sources.v2_x\r\x1b[0K\n",
			wantEnd:   "section_end:1700000000:get-sources.v2_x\r\x1b[0K",
		},
		{
			name: "sanitised name", section: "Upload Artifacts: ü/1", header: "Uploading",
			wantStart: "section_start:1700000000:upload_artifacts_____1\r\x1b[0KUploading\n",
			wantEnd:   "section_end:1700000000:upload_artifacts_____1\r\x1b[0K",
		},
		{
			name: "empty name", section: "", header: "h",
			wantStart: "section_start:1700000000:section\r\x1b[0Kh\n",
			wantEnd:   "section_end:1700000000:section\r\x1b[0K",
		},
		{
			name: "header kept on one line", section: "s", header: "a\nb\r\nc",
			wantStart: "section_start:1700000000:s\r\x1b[0Ka b  c\n",
			wantEnd:   "section_end:1700000000:s\r\x1b[0K",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var start, end bytes.Buffer
			if err := SectionStart(&start, at, tt.section, tt.header); err != nil {
				t.Fatal(err)
			}
			if err := SectionEnd(&end, at, tt.section); err != nil {
				t.Fatal(err)
			}
			if start.String() != tt.wantStart {
				t.Errorf("start = %q, want %q", start.String(), tt.wantStart)
			}
			if end.String() != tt.wantEnd {
				t.Errorf("end = %q, want %q", end.String(), tt.wantEnd)
			}
		})
	}
}

func TestSectionName(t *testing.T) {
	for _, c := range []byte("\x00 /:\r\n\x1b[]ÄZ") {
		name := SectionName(string([]byte{'a', c}))
		for _, got := range []byte(name) {
			ok := got >= 'a' && got <= 'z' || got >= '0' && got <= '9' || got == '_' || got == '.' || got == '-'
			if !ok {
				t.Errorf("SectionName(%q) = %q: byte %q is not allowed", []byte{'a', c}, name, got)
			}
		}
	}
}

func TestSectionWriteErrorsNameTheSection(t *testing.T) {
	boom := errors.New("broken pipe")
	err := SectionStart(failingWriter{boom}, time.Unix(0, 0), "build", "")
	if !errors.Is(err, boom) || !bytes.Contains([]byte(err.Error()), []byte(`"build"`)) {
		t.Errorf("SectionStart error = %v; want it to wrap %v and name the section", err, boom)
	}
	err = SectionEnd(failingWriter{boom}, time.Unix(0, 0), "build")
	if !errors.Is(err, boom) || !bytes.Contains([]byte(err.Error()), []byte(`"build"`)) {
		t.Errorf("SectionEnd error = %v; want it to wrap %v and name the section", err, boom)
	}
}

func TestMarkerPatternReadsWhatSectionsWrite(t *testing.T) {
	var b strings.Builder
	at := time.Unix(1700000000, 0)
	if err := SectionStart(&b, at, "get_sources", "Getting sources"); err != nil {
		t.Fatal(err)
	}
	if err := SectionEnd(&b, at, "get_sources"); err != nil {
		t.Fatal(err)
	}
	m := MarkerPattern().FindAllStringSubmatch(b.String(), -1)
	if len(m) != 2 || m[0][1] != "start" || m[0][2] != "get_sources" || m[1][1] != "end" || m[1][2] != "get_sources" {
		t.Errorf("markers read back as %q from %q", m, b.String())
	}
	if rest := MarkerPattern().ReplaceAllString(b.String(), ""); rest != "Getting sources\n" {
		t.Errorf("without markers the trace is %q, want the header alone", rest)
	}
}
