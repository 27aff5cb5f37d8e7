package pipeline

import "sort"

// GitLab's keywords, and what berth makes of those it does not support yet.
// They are functions so that no caller can change the tables.

// reservedTopLevel reports whether name is a top-level keyword of GitLab CI
// rather than a job name. pages is a job (GitLab Pages' deploy job), not a
// keyword.
func reservedTopLevel(name string) bool {
	switch name {
	case "default", "include", "stages", "variables", "workflow",
		// Old-style globals, superseded by default:.
		"image", "services", "cache", "before_script", "after_script",
		// Old name of stages.
		"types":
		return true
	}
	return false
}

// unsupportedTopLevel maps the top-level keywords berth ignores to what
// that means for the user.
func unsupportedTopLevel() map[string]string {
	return map[string]string{
		"types": "it is the old name of stages; rename it to stages",
	}
}

// defaultKeywords are the keywords default: may hold in GitLab.
func defaultKeywords() []string {
	return []string{
		"after_script", "artifacts", "before_script", "cache", "hooks",
		"id_tokens", "image", "interruptible", "retry", "services", "tags",
		"timeout",
	}
}

// supportedJobKeywords are the job keywords berth exec applies.
func supportedJobKeywords() []string {
	return []string{
		"after_script", "allow_failure", "artifacts", "before_script", "cache",
		"coverage", "dependencies", "except", "extends", "image", "inherit",
		"interruptible", "manual_confirmation", "needs", "only", "parallel",
		"resource_group", "retry", "rules", "script", "services", "stage",
		"start_in", "tags", "timeout", "variables", "when",
	}
}

// unsupportedJobKeywords maps the job keywords berth ignores to what that
// means for the user.
func unsupportedJobKeywords() map[string]string {
	return map[string]string{
		"dast_configuration": "it has no effect",
		"environment":        "no environment is set up",
		"hooks":              "the hooks do not run",
		"id_tokens":          "no ID tokens are issued",
		"identity":           "no identity is set up",
		"pages":              "it has no effect",
		"release":            "no release is created",
		"run":                "the job is left out",
		"secrets":            "no secrets are fetched",
		"trigger":            "the job is left out",
	}
}

// jobKeywords are all the job keywords GitLab knows, sorted.
func jobKeywords() []string {
	all := supportedJobKeywords()
	for k := range unsupportedJobKeywords() {
		all = append(all, k)
	}
	sort.Strings(all)
	return all
}

// whenValues are the values when: may have.
func whenValues() []string {
	return []string{"on_success", "on_failure", "always", "manual", "delayed", "never"}
}

// pullPolicies are the values image:pull_policy may have.
func pullPolicies() []string {
	return []string{"always", "if-not-present", "never"}
}

// defaultStages are GitLab's stages for a file without stages:.
func defaultStages() []string {
	return []string{".pre", "build", "test", "deploy", ".post"}
}

// suggest returns the word in known closest to word if it is a likely typo
// of it (at most two edits away), or "".
func suggest(word string, known []string) string {
	best, bestDist := "", 3
	for _, k := range known {
		if len(word) > len(k)+bestDist || len(k) > len(word)+bestDist {
			continue // too far apart in length alone
		}
		if d := editDistance(word, k); d < bestDist {
			best, bestDist = k, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance between a and b, in bytes.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
