package lambda

import (
	"archive/zip"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// FunctionPackage is the import path of the berth function's command.
const FunctionPackage = "github.com/berthci/berth/lambda/function"

// PackageOptions says how Package builds the function.
type PackageOptions struct {
	// Arch is the function's architecture: "amd64" (Lambda's x86_64, the
	// default) or "arm64".
	Arch string
	// Source is a directory inside a checkout of berth's module; the
	// function is built from it (default: the current directory).
	Source string
	// Go is the go command (default: go from PATH).
	Go string
}

// Package builds the berth function for Lambda's provided.al2023 runtime
// (static, CGO off, without the legacy RPC mode) and writes the deployment
// zip to outZip: one file, bootstrap, executable. It needs Go and berth's
// source: it is what `berth lambda package` runs, and the same as
//
//	CGO_ENABLED=0 GOOS=linux GOARCH=amd64 go build -trimpath -tags lambda.norpc -ldflags='-s -w' -o bootstrap ./lambda/function
//	zip function.zip bootstrap
func Package(ctx context.Context, outZip string, o PackageOptions) error {
	arch := o.Arch
	switch arch {
	case "", "amd64", "x86_64":
		arch = "amd64"
	case "arm64", "aarch64":
		arch = "arm64"
	default:
		return fmt.Errorf("packaging the Lambda function: architecture %q is not one Lambda runs (amd64 or arm64)", o.Arch)
	}
	goCmd := o.Go
	if goCmd == "" {
		goCmd = "go"
	}
	tmp, err := os.MkdirTemp("", "berth-lambda-package-")
	if err != nil {
		return fmt.Errorf("packaging the Lambda function: %w", err)
	}
	defer os.RemoveAll(tmp)
	bin := filepath.Join(tmp, "bootstrap")
	cmd := exec.CommandContext(ctx, goCmd, "build", "-trimpath", "-buildvcs=false", "-tags", "lambda.norpc",
		"-ldflags", "-s -w", "-o", bin, FunctionPackage)
	cmd.Dir = o.Source
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+arch)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(out.String())
		hint := ""
		if strings.Contains(msg, "provides package") || strings.Contains(msg, "not in std") || strings.Contains(msg, "cannot find module") {
			hint = "; run it inside a checkout of github.com/berthci/berth, or give that directory"
		}
		return fmt.Errorf("building the Lambda function (%s build %s for linux/%s in %q): %w: %s%s", goCmd, FunctionPackage, arch, dirName(o.Source), err, msg, hint)
	}
	if err := writeZip(outZip, bin); err != nil {
		return fmt.Errorf("packaging the Lambda function: %w", err)
	}
	return nil
}

func dirName(d string) string {
	if d == "" {
		return "."
	}
	return d
}

// writeZip writes a zip holding bin as "bootstrap" (mode 0755), through a
// temporary file renamed into place.
func writeZip(outZip, bin string) error {
	src, err := os.Open(bin)
	if err != nil {
		return err
	}
	defer src.Close()
	fi, err := src.Stat()
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(outZip), ".berth-lambda-*.zip")
	if err != nil {
		return fmt.Errorf("creating %s: %w", outZip, err)
	}
	defer os.Remove(f.Name())
	zw := zip.NewWriter(f)
	hdr := &zip.FileHeader{Name: "bootstrap", Method: zip.Deflate, Modified: fi.ModTime()}
	hdr.SetMode(0o755)
	w, err := zw.CreateHeader(hdr)
	if err == nil {
		_, err = io.Copy(w, src)
	}
	if err == nil {
		err = zw.Close()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("writing %s: %w", outZip, err)
	}
	if err := os.Chmod(f.Name(), 0o644); err != nil {
		return err
	}
	if err := os.Rename(f.Name(), outZip); err != nil {
		return fmt.Errorf("writing %s: %w", outZip, err)
	}
	return nil
}
