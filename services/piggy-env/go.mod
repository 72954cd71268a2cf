module github.com/piggysec/piggy/services/piggy-env

go 1.26.0
