// Package metrics is berth's Prometheus endpoint: jobs by state and
// executor, job durations, requests to GitLab by endpoint and status, trace
// bytes sent, executor plugin restarts and jobs running, on /metrics, and
// /healthz. Each Metrics has its own registry.
package metrics

import (
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics holds berth's metrics.
type Metrics struct {
	reg        *prometheus.Registry
	jobs       *prometheus.CounterVec
	running    *prometheus.GaugeVec
	duration   *prometheus.HistogramVec
	requests   *prometheus.CounterVec
	traceBytes prometheus.Counter
}

// New returns the metrics; restarts, when set, is asked at each scrape for
// how often each executor's plugin was restarted.
func New(restarts func() map[string]int) *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		jobs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "berth_jobs_total", Help: "Jobs finished, by final state and executor.",
		}, []string{"state", "executor"}),
		running: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "berth_jobs_running", Help: "Jobs running now, by executor.",
		}, []string{"executor"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "berth_job_duration_seconds", Help: "Time from a job's start to its end, by executor.",
			Buckets: []float64{0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 1800, 3600},
		}, []string{"executor"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "berth_gitlab_requests_total", Help: "Requests to GitLab, by endpoint and status (0: no answer).",
		}, []string{"endpoint", "status"}),
		traceBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "berth_trace_bytes_sent_total", Help: "Trace bytes GitLab accepted.",
		}),
	}
	m.reg.MustRegister(m.jobs, m.running, m.duration, m.requests, m.traceBytes,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if restarts != nil {
		m.reg.MustRegister(&restartCollector{count: restarts})
	}
	return m
}

// JobStarted counts a job that starts.
func (m *Metrics) JobStarted(executor string) { m.running.WithLabelValues(executor).Inc() }

// JobFinished counts a job that ended.
func (m *Metrics) JobFinished(executor, state string, d time.Duration) {
	m.running.WithLabelValues(executor).Dec()
	m.jobs.WithLabelValues(state, executor).Inc()
	m.duration.WithLabelValues(executor).Observe(d.Seconds())
}

// TraceBytesSent counts trace bytes GitLab accepted.
func (m *Metrics) TraceBytesSent(n int) { m.traceBytes.Add(float64(n)) }

// Request counts an answer of GitLab (status 0: none).
func (m *Metrics) Request(endpoint string, status int) {
	m.requests.WithLabelValues(endpoint, strconv.Itoa(status)).Inc()
}

// Handler serves /metrics and /healthz.
func (m *Metrics) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		_, _ = w.Write([]byte("ok\n"))
	})
	return mux
}

// restartCollector reports plugin restarts at scrape time.
type restartCollector struct {
	count func() map[string]int
}

var restartDesc = prometheus.NewDesc("berth_plugin_restarts_total", "Executor plugin processes started again after one died, by executor.", []string{"executor"}, nil)

func (c *restartCollector) Describe(ch chan<- *prometheus.Desc) { ch <- restartDesc }

func (c *restartCollector) Collect(ch chan<- prometheus.Metric) {
	for executor, n := range c.count() {
		ch <- prometheus.MustNewConstMetric(restartDesc, prometheus.CounterValue, float64(n), executor)
	}
}
