// Command function is berth's AWS Lambda function: built as the file
// bootstrap of a provided.al2023 function, it runs whole CI jobs that the
// lambda executor sends it (see lambda/protocol for the request and the
// response).
//
// Build it for Lambda (or use berth lambda package, which does the same
// and zips it):
//
//	CGO_ENABLED=0 GOOS=linux GOARCH=amd64 go build -trimpath -tags lambda.norpc -o bootstrap ./lambda/function
//
// For each invocation it empties its scratch directory (/tmp, the only
// writable place in Lambda; BERTH_SCRATCH_DIR overrides it for tests under
// the Runtime Interface Emulator), extracts the uploaded files into the
// build directory, runs the steps one after another with /bin/sh (OnSuccess
// steps are skipped after a failure, Always steps still run), and answers
// with their output, exit codes and a tar of the paths asked for. It stops
// the job before Lambda's deadline (the request's reserve_ms before it),
// with a line in the output saying so, and empties the scratch directory
// again before it answers, so that nothing of a job reaches the next
// invocation. Every step runs in a process group of its own, and the
// function is a child subreaper: whatever a step leaves running is killed
// when the step ends.
//
// Output that does not fit in a Lambda response (6 MB) is cut, shared
// fairly between the streams, and each cut stream ends with a line saying
// how much was dropped.
//
// Steps inherit the function's environment, including the credentials of
// its execution role: give the role only what the jobs may do.
package main
