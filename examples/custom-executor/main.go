// Command berth-executor-bwrap is a berth executor plugin that runs every
// step of a job in a bubblewrap sandbox. See README.md.
package main

import (
	"github.com/berthci/berth/examples/custom-executor/bwrapexec"
	"github.com/berthci/berth/sdk"
)

func main() { sdk.Serve(bwrapexec.New()) }
