module github.com/piggysec/piggy/libs

go 1.26.0
