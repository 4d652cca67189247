package netnstest

import (
	"os"
	"sort"
	"testing"
)

// Job is one small network job a re-executed test binary does inside a
// namespace: it gets the value of its environment variable and returns the
// process's exit code.
type Job func(value string) int

// Main is the body of a test package's TestMain: when the test binary was
// re-executed with one of the jobs' environment variables set (or
// HTTPGetEnv, whose job is HTTPGet), it runs that job and exits with its
// code; otherwise it runs the tests.
func Main(m *testing.M, jobs map[string]Job) {
	if job, value, ok := pick(os.Getenv, jobs); ok {
		os.Exit(job(value))
	}
	os.Exit(m.Run())
}

// pick finds the job whose environment variable is set (HTTPGetEnv first,
// then the others by name).
func pick(getenv func(string) string, jobs map[string]Job) (Job, string, bool) {
	if url := getenv(HTTPGetEnv); url != "" {
		return func(url string) int { return HTTPGet(url, os.Stdout, os.Stderr) }, url, true
	}
	names := make([]string, 0, len(jobs))
	for name := range jobs {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		if v := getenv(name); v != "" {
			return jobs[name], v, true
		}
	}
	return nil, "", false
}
