"""Datasets: readers for each format -> Sample records; images; validation; splits; demo data."""
