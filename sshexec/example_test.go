package sshexec_test

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/berthci/berth/sdk/archive"
	"github.com/berthci/berth/sshexec"
)

// How an executor uses the transport for one job: one connection, a
// workspace, a session per stage, files in and out as tar streams, and
// the workspace removed at the end. (Not run: it needs a server.)
func Example() {
	ctx := context.Background()
	key, err := sshexec.KeyFileAuth("/home/ci/.ssh/id_ed25519", "")
	if err != nil {
		fmt.Println(err)
		return
	}
	c, err := sshexec.Dial(ctx, sshexec.Config{
		Host: "build-host.example", User: "ci",
		Auth:     []ssh.AuthMethod{key},
		HostKeys: sshexec.HostKeyPolicy{KnownHostsFile: "/home/ci/.ssh/known_hosts"},
		Retries:  3,
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer c.Close()

	dir, err := c.MakeWorkspace(ctx, "builds/"+archive.JobDirName("job 42"))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer c.RemoveWorkspace(context.WithoutCancel(ctx), dir)

	// A cancel (ctx's end) sends SIGTERM to the stage's process group,
	// then SIGKILL after the grace period.
	stageCtx, cancel := context.WithTimeout(ctx, time.Hour)
	defer cancel()
	code, err := c.Run(stageCtx, sshexec.Stage{
		Dir: dir, Shell: "bash", GracePeriod: 10 * time.Second,
		Script: "export GREETING=hello\necho \"$GREETING\" > out.txt",
		Stdout: os.Stdout, Stderr: os.Stderr,
	})
	fmt.Println(code, err)

	var archive strings.Builder
	if err := c.Download(ctx, dir, []string{"out.txt"}, &archive); err != nil {
		fmt.Println(err)
	}
}
