module github.com/piggysec/piggy/services/secret-broker

go 1.26.0
