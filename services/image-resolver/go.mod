module github.com/piggysec/piggy/services/image-resolver

go 1.26.0
