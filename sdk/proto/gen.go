// Package proto holds the executor protocol's definition and its generated Go code.
//
// Regenerate with `go generate ./sdk/proto` after installing protoc (Debian's
// protobuf-compiler) and the Go plugins:
//
//	go install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
//	go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.5.1
package proto

//go:generate protoc --proto_path=. --go_out=. --go_opt=paths=source_relative --go-grpc_out=. --go-grpc_opt=paths=source_relative berth/executor/v1/executor.proto
