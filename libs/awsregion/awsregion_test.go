package awsregion

import "testing"

func TestValid(t *testing.T) {
	for _, name := range []string{"us-east-1", "eu-central-2", "ap-southeast-5", "us-gov-west-1", "cn-north-1", "us-isob-east-1", "il-central-1"} {
		if !Valid(name) {
			t.Errorf("Valid(%q) = false", name)
		}
	}
	for _, name := range []string{"", "us-east", "east-1", "US-EAST-1", "us-east-1 ", "us-east-123", "u-east-1", "us_east_1", "us-east-1.evil", "../us-east-1"} {
		if Valid(name) {
			t.Errorf("Valid(%q) = true", name)
		}
	}
}
