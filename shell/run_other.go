//go:build !linux

package shell

import (
	"context"
	"errors"

	"github.com/berthci/berth/sdk"
)

var errLinuxOnly = errors.New("the shell executor runs steps only on Linux")

// Run implements sdk.Executor; it needs Linux (process groups, /proc,
// parent-death signals).
func (e *Executor) Run(context.Context, sdk.Handle, sdk.Step, sdk.Output) (int, error) {
	return -1, errLinuxOnly
}

func (e *Executor) killJob(context.Context, string) error { return nil }

func killStrays(string) error { return nil }
