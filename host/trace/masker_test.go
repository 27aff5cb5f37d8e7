package trace

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"strings"
	"testing"
)

// referenceMask is the specification of masking, written plainly: scan left
// to right; where one or more secrets start, replace the longest and go on
// after it.
func referenceMask(in string, secrets []string) string {
	var out strings.Builder
	for i := 0; i < len(in); {
		longest := 0
		for _, s := range secrets {
			if s != "" && len(s) > longest && strings.HasPrefix(in[i:], s) {
				longest = len(s)
			}
		}
		if longest > 0 {
			out.WriteString(Masked)
			i += longest
			continue
		}
		out.WriteByte(in[i])
		i++
	}
	return out.String()
}

// maskWrites runs the pieces through a Masker, one Write each, and returns
// what reached the sink after Close.
func maskWrites(t testing.TB, secrets []string, pieces ...[]byte) string {
	t.Helper()
	var sink bytes.Buffer
	m := NewMasker(&sink, secrets)
	for _, p := range pieces {
		n, err := m.Write(p)
		if err != nil || n != len(p) {
			t.Fatalf("Write(%q) = %d, %v; want %d, nil", p, n, err, len(p))
		}
	}
	if err := m.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	return sink.String()
}

func TestMaskerSplits(t *testing.T) {
	tests := []struct {
		name    string
		secrets []string
		in      string
		want    string
	}{
		{"no secrets", nil, "plain text\n", "plain text\n"},
		{"empty secret ignored", []string{""}, "plain", "plain"},
		{"duplicate secrets", []string{"pw", "pw"}, "a pw b", "a [MASKED] b"},
		{"one occurrence", []string{"hunter2"}, "password: hunter2\n", "password: [MASKED]\n"},
		{"at start and end", []string{"tok"}, "tok middle tok", "[MASKED] middle [MASKED]"},
		{"only the secret", []string{"tok"}, "tok", "[MASKED]"},
		{"adjacent same", []string{"xy"}, "xyxyxy", "[MASKED][MASKED][MASKED]"},
		{"adjacent different", []string{"abc", "def"}, "-abcdef-", "-[MASKED][MASKED]-"},
		{"self-overlapping occurrences", []string{"aa"}, "aaa", "[MASKED]a"},
		{"periodic secret", []string{"abab"}, "abababab ababab", "[MASKED][MASKED] [MASKED]ab"},
		{"kmp fallback", []string{"aab"}, "aaab aab", "a[MASKED] [MASKED]"},
		{"prefix secret: longer wins", []string{"abc", "abcdef"}, "xabcdefy", "x[MASKED]y"},
		{"prefix secret: only shorter", []string{"abcdef", "abc"}, "xabcdey", "x[MASKED]dey"},
		{"prefix secret: longer cut off by end", []string{"abc", "abcdef"}, "xabcde", "x[MASKED]de"},
		{"overlapping secrets: leftmost wins", []string{"bcd", "ab"}, "abcd", "[MASKED]cd"},
		{"secret inside another", []string{"b", "abc"}, "abc b", "[MASKED] [MASKED]"},
		{"unfinished secret at end", []string{"secret"}, "a secre", "a secre"},
		{"one-byte secret", []string{"x"}, "axbxx", "a[MASKED]b[MASKED][MASKED]"},
		{"multi-line secret", []string{"line one\nline two"}, "<line one\nline two>\nline one\n", "<[MASKED]>\nline one\n"},
		{"unicode secret", []string{"pässwörd✓"}, "k=pässwörd✓;", "k=[MASKED];"},
		{"many secrets", []string{"one", "two", "three", "four", "five"}, "five four three two one", "[MASKED] [MASKED] [MASKED] [MASKED] [MASKED]"},
		{"binary", []string{"\x00\xff\x00"}, "\x00\x00\xff\x00\xff", "\x00[MASKED]\xff"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if ref := referenceMask(tt.in, tt.secrets); ref != tt.want {
				t.Fatalf("test table disagrees with the reference: want %q, reference %q", tt.want, ref)
			}
			in := []byte(tt.in)
			if got := maskWrites(t, tt.secrets, in); got != tt.want {
				t.Errorf("one write: got %q, want %q", got, tt.want)
			}
			for i := 0; i <= len(in); i++ {
				if got := maskWrites(t, tt.secrets, in[:i], in[i:]); got != tt.want {
					t.Errorf("split at %d: got %q, want %q", i, got, tt.want)
				}
				for j := i; j <= len(in); j++ {
					if got := maskWrites(t, tt.secrets, in[:i], in[i:j], in[j:]); got != tt.want {
						t.Errorf("split at %d and %d: got %q, want %q", i, j, got, tt.want)
					}
				}
			}
			bytewise := make([][]byte, len(in))
			for i := range in {
				bytewise[i] = in[i : i+1]
			}
			if got := maskWrites(t, tt.secrets, bytewise...); got != tt.want {
				t.Errorf("byte by byte: got %q, want %q", got, tt.want)
			}
		})
	}
}

// TestMaskerHoldsBackOnlyAPossiblePrefix checks what reaches the sink before
// Close: everything except the shortest tail that could still become a
// secret.
func TestMaskerHoldsBackOnlyAPossiblePrefix(t *testing.T) {
	type step struct {
		write string
		sink  string // the whole sink after this write
	}
	tests := []struct {
		name    string
		secrets []string
		steps   []step
		final   string
	}{
		{
			name:    "prefix of a secret held",
			secrets: []string{"secret"},
			steps:   []step{{"abc sec", "abc "}, {"ret!", "abc [MASKED]!"}, {"se", "abc [MASKED]!"}, {"x", "abc [MASKED]!sex"}},
			final:   "abc [MASKED]!sex",
		},
		{
			name:    "nothing held without a prefix",
			secrets: []string{"secret"},
			steps:   []step{{"hello\n", "hello\n"}, {"world t", "hello\nworld t"}},
			final:   "hello\nworld t",
		},
		{
			name:    "shortest tail only",
			secrets: []string{"aab"},
			steps:   []step{{"xaaa", "xa"}, {"b", "xa[MASKED]"}},
			final:   "xa[MASKED]",
		},
		{
			name:    "match held while a longer secret may follow",
			secrets: []string{"ab", "abcd"},
			steps:   []step{{"xab", "x"}, {"c", "x"}, {"z", "x[MASKED]cz"}},
			final:   "x[MASKED]cz",
		},
		{
			name:    "held prefix flushed by Close",
			secrets: []string{"ab", "abcd"},
			steps:   []step{{"xabc", "x"}},
			final:   "x[MASKED]c",
		},
		{
			name:    "one-byte secret never held",
			secrets: []string{"s"},
			steps:   []step{{"as", "a[MASKED]"}},
			final:   "a[MASKED]",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var sink bytes.Buffer
			m := NewMasker(&sink, tt.secrets)
			for _, s := range tt.steps {
				if _, err := m.Write([]byte(s.write)); err != nil {
					t.Fatal(err)
				}
				if sink.String() != s.sink {
					t.Errorf("after writing %q: sink %q, want %q", s.write, sink.String(), s.sink)
				}
			}
			if err := m.Close(); err != nil {
				t.Fatal(err)
			}
			if sink.String() != tt.final {
				t.Errorf("after Close: sink %q, want %q", sink.String(), tt.final)
			}
		})
	}
}

func TestMaskerSecretLongerThanWrites(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	long := make([]byte, 3*maskChunk+17) // longer than the masker's own chunk
	for i := range long {
		long[i] = byte('A' + rng.IntN(26)) // upper case: "mid" cannot occur in it
	}
	secret := string(long)
	in := []byte("head " + secret + " mid " + secret[:len(secret)-1] + " tail " + secret)
	want := "head [MASKED] [MASKED] " + secret[:len(secret)-1] + " tail [MASKED]"
	for _, size := range []int{1 << 20, maskChunk, 32 << 10, 1000, 7} {
		var pieces [][]byte
		for rest := in; len(rest) > 0; {
			n := min(size, len(rest))
			pieces = append(pieces, rest[:n])
			rest = rest[n:]
		}
		if got := maskWrites(t, []string{secret, "mid"}, pieces...); got != want {
			t.Errorf("writes of %d bytes: output differs from the expected masking (len %d)", size, len(got))
		}
	}
}

// TestMaskerMatchesReference streams random text over a tiny alphabet (so
// that secrets, prefixes and overlaps are frequent) through a Masker in
// random pieces and compares with referenceMask. The long inputs make the
// masker's search give up on its rare-byte candidates and fall back.
func TestMaskerMatchesReference(t *testing.T) {
	tests := []struct {
		name              string
		iterations        int
		maxSecret, maxLen int
	}{
		{"short", 3000, 6, 60},
		{"long", 200, 12, 5000},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(7, 11))
			word := func(maxLen int) string {
				b := make([]byte, 1+rng.IntN(maxLen))
				for i := range b {
					b[i] = "ab\n"[rng.IntN(3)]
				}
				return string(b)
			}
			for iter := range tt.iterations {
				secrets := make([]string, 1+rng.IntN(4))
				for i := range secrets {
					secrets[i] = word(tt.maxSecret)
				}
				in := word(tt.maxLen)
				var pieces [][]byte
				for rest := []byte(in); len(rest) > 0; {
					n := 1 + rng.IntN(min(len(rest), tt.maxLen/4+1))
					pieces = append(pieces, rest[:n])
					rest = rest[n:]
				}
				want := referenceMask(in, secrets)
				if got := maskWrites(t, secrets, pieces...); got != want {
					t.Fatalf("iteration %d: secrets %q, pieces %q:\n got %q\nwant %q", iter, secrets, pieces, got, want)
				}
			}
		})
	}
}

type failingWriter struct{ err error }

func (f failingWriter) Write([]byte) (int, error) { return 0, f.err }

func TestMaskerReportsWriterErrors(t *testing.T) {
	boom := errors.New("disk full")
	for _, secrets := range [][]string{nil, {"secret"}} {
		m := NewMasker(failingWriter{boom}, secrets)
		if _, err := m.Write([]byte("some output\n")); !errors.Is(err, boom) {
			t.Errorf("secrets %q: Write error = %v, want %v", secrets, err, boom)
		}
		if _, err := m.Write([]byte("more\n")); !errors.Is(err, boom) {
			t.Errorf("secrets %q: second Write error = %v, want the first error again", secrets, err)
		}
		if err := m.Close(); !errors.Is(err, boom) {
			t.Errorf("secrets %q: Close error = %v, want %v", secrets, err, boom)
		}
	}
}

func TestMaskerSteadyStateDoesNotAllocate(t *testing.T) {
	data, secrets := benchmarkInput()
	m := NewMasker(discard{}, secrets)
	chunk := data[:32<<10]
	_, _ = m.Write(chunk) // grow the buffers once
	if allocs := testing.AllocsPerRun(50, func() { _, _ = m.Write(chunk) }); allocs != 0 {
		t.Errorf("Write of 32 KiB allocates %.1f times, want 0", allocs)
	}
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

// benchmarkInput returns 1 MiB of log-like text with the five secrets
// scattered in it.
func benchmarkInput() ([]byte, []string) {
	secrets := []string{
		"glpat-Xb3kq9Z2mR7vT1nL0pQw",
		"s3cr3t-p4ssw0rd",
		"AKIAIOSFODNN7EXAMPLE",
		"wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
		"-----BEGIN KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END KEY-----",
	}
	rng := rand.New(rand.NewPCG(3, 5))
	words := []string{"Step", "running", "go", "test", "./...", "ok", "PASS", "-", "github.com/berthci/berth", "0.013s", "error:", "s3cr3t", "AKIA", "glpat-", "\n"}
	var b bytes.Buffer
	for b.Len() < 1<<20 {
		if rng.IntN(200) == 0 {
			b.WriteString(secrets[rng.IntN(len(secrets))])
		}
		b.WriteString(words[rng.IntN(len(words))])
		b.WriteByte(' ')
	}
	return b.Bytes()[:1<<20], secrets
}

// BenchmarkMasker measures 32 KiB writes with five secrets: "log" is
// log-like text with the secrets and their prefixes scattered in it,
// "lowercase" has secrets made only of common bytes, "pathological" a
// secret that almost matches everywhere.
func BenchmarkMasker(b *testing.B) {
	data, secrets := benchmarkInput()
	const size = 32 << 10
	almost := bytes.Repeat([]byte(strings.Repeat("a", 199)+"x"), 1<<20/200)
	tests := []struct {
		name    string
		data    []byte
		secrets []string
	}{
		{"log", data, secrets},
		{"lowercase", data, []string{"running test", "steps", "okay then", "github.com/berthci", "passed"}},
		{"pathological", almost, []string{strings.Repeat("a", 200), strings.Repeat("a", 150) + "b", "aaab", "aaaac", "ax"}},
	}
	for _, tt := range tests {
		b.Run(tt.name, func(b *testing.B) {
			m := NewMasker(discard{}, tt.secrets)
			b.SetBytes(size)
			b.ReportAllocs()
			off := 0
			for b.Loop() {
				if off+size > len(tt.data) {
					off = 0
				}
				if _, err := m.Write(tt.data[off : off+size]); err != nil {
					b.Fatal(err)
				}
				off += size
			}
		})
	}
}

func FuzzMasker(f *testing.F) {
	f.Add([]byte("password: hunter2\n"), "hunter2", uint16(12), uint16(14))
	f.Add([]byte("aaaaaaa"), "aa", uint16(1), uint16(4))
	f.Add([]byte("abababab"), "abab", uint16(3), uint16(3))
	f.Add([]byte("xaaab"), "aab", uint16(2), uint16(4))
	f.Add([]byte("line one\nline two\n"), "one\nline", uint16(7), uint16(9))
	f.Add([]byte("[MASKED]"), "D]", uint16(0), uint16(5))
	f.Add([]byte{0, 0xff, 0, 0xff, 0}, "\x00\xff\x00", uint16(1), uint16(2))
	f.Fuzz(func(t *testing.T, data []byte, secret string, a, b uint16) {
		i := int(a) % (len(data) + 1)
		j := int(b) % (len(data) + 1)
		if i > j {
			i, j = j, i
		}
		got := maskWrites(t, []string{secret}, data[:i], data[i:j], data[j:])
		want := string(data)
		if secret != "" {
			want = strings.ReplaceAll(want, secret, Masked)
		}
		if got != want {
			t.Fatalf("secret %q, pieces %q %q %q:\n got %q\nwant %q", secret, data[:i], data[i:j], data[j:], got, want)
		}
		// The output can only contain the secret again through the bytes
		// of "[MASKED]" itself (secret "D]", input "[MASKED]").
		if secret != "" && !strings.ContainsAny(secret, Masked) && strings.Contains(got, secret) {
			t.Fatalf("secret %q survives in %q", secret, got)
		}
	})
}
