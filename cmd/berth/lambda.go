package main

import (
	"context"
	"flag"
	"fmt"
	"io"

	"github.com/berthci/berth/lambda"
)

// lambdaCommand is `berth lambda package`: it builds the function that
// runs jobs inside AWS Lambda and zips it for deployment (docs/lambda.md).
func lambdaCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "package" {
		return fmt.Errorf("lambda: say package (berth lambda package [-o function.zip] [--arch amd64|arm64] [--source DIR])")
	}
	fs := flag.NewFlagSet("berth lambda package", flag.ContinueOnError)
	fs.SetOutput(stderr)
	out := fs.String("o", "function.zip", "the deployment zip to write")
	arch := fs.String("arch", "amd64", "the function's architecture: amd64 or arm64")
	source := fs.String("source", ".", "a folder inside a checkout of berth (the function is built from it with Go)")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if err := lambda.Package(ctx, *out, lambda.PackageOptions{Arch: *arch, Source: *source}); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote %s (runtime provided.al2023, handler bootstrap, architecture %s)\n", *out, *arch)
	return nil
}
