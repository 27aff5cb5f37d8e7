package gitlab

import (
	"encoding/json"
	"testing"
)

// FuzzDecodeJob: any bytes give a job or a DecodeError, never a panic; a
// decoded job has an id and a token, and survives a round trip.
func FuzzDecodeJob(f *testing.F) {
	for _, seed := range []string{
		`{"id":10,"token":"t","steps":[{"name":"script","script":["echo hi"],"when":"on_success"}]}`,
		`{"id":1,"token":"x","variables":[{"key":"A","value":"b","masked":true,"file":false,"raw":true}],"git_info":{"sha":"abc","refspecs":["+refs/heads/main:refs/remotes/origin/main"],"depth":20}}`,
		`{"id":2,"token":"y","artifacts":[{"name":"a","paths":["out/"],"exclude":["*.log"],"artifact_type":"junit","artifact_format":"gzip"}],"cache":[{"key":"k","fallback_keys":["f"],"policy":"pull"}]}`,
		`{"id":3,"token":"z","dependencies":[{"id":2,"name":"b","token":"q","artifacts_file":{"filename":"a.zip","size":5}}],"image":null,"services":[]}`,
		`{"id":"x"}`, `[]`, `null`, `{"id":5,"token":"t","steps":"no"}`, `{"id":-1,"token":"t"}`, ``,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		j, err := DecodeJob(data)
		if err != nil {
			if _, ok := err.(*DecodeError); !ok {
				t.Fatalf("error of type %T: %v", err, err)
			}
			return
		}
		if j.ID <= 0 || j.Token == "" {
			t.Fatalf("decoded a job without id or token: %+v", j)
		}
		again, err := json.Marshal(j)
		if err != nil {
			t.Fatal(err)
		}
		j2, err := DecodeJob(again)
		if err != nil || j2.ID != j.ID || j2.Token != j.Token || len(j2.Steps) != len(j.Steps) || len(j2.Variables) != len(j.Variables) {
			t.Fatalf("round trip: %v", err)
		}
	})
}
